/* race_k32.c - race compiled for 32-byte keys (the implementation is race.inc). */
#define KVDM_KEY_BYTES 32
#include "race.h"
#include "race.inc"
