"""kvdm.traces: trace loaders, synthetic generators, trace -> operation mapping, characterisation."""
