/* race.h - the race index (one-sided extendible hashing after RACE, ATC'21), for 8- and 32-byte
 * keys. The implementation is race.inc, compiled by race_k8.c and race_k32.c. */
#ifndef KVDM_RACE_H
#define KVDM_RACE_H

#include "kvidx.h"

KVIDX_DECLARE(race_k8)
KVIDX_DECLARE(race_k32)

#endif
