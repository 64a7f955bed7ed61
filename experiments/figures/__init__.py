"""kvdm.experiments.figures: the figures: of traces (``traces``) and of replay results (``plots``)."""
