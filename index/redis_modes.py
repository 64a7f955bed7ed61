"""The redis backend's range and prefix modes, apart from its client (redis_index.py): the
command line offers them as choices without importing the Redis client library, which is about
a hundred modules, seconds per process under the SoftRoCE guest's TCG emulation, and which a
run of a native index (an MPI rank, a spawned client) never needs."""

RANGE_MODES = ("zset", "mget")
PREFIX_MODES = ("pipeline", "lua")
