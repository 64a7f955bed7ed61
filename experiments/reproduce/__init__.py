"""kvdm.experiments.reproduce.run: reproducing the paper's figures (``run``) and writing the report
(``report``)."""
