"""kvdm.experiments.replay: the replay engine (a trace's operations driven through an index by
N clients, local processes or MPI ranks), its latency histograms and its results files."""
