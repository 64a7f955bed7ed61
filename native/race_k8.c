/* race_k8.c - race compiled for 8-byte keys (the implementation is race.inc). */
#define KVDM_KEY_BYTES 8
#include "race.h"
#include "race.inc"
