"""kvdm.experiments: the ``kvdm`` CLI, replay engine, metrics, results files, figures, paper reproduction."""
