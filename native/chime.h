/* chime.h - the chime index (B+tree internals, hash-bucketed leaves), for 8- and 32-byte keys.
 * The implementation is btree_core.inc with btree_leaf_chime.inc, compiled by chime_k8.c and
 * chime_k32.c. */
#ifndef KVDM_CHIME_H
#define KVDM_CHIME_H

#include "kvidx.h"

KVIDX_DECLARE(chime_k8)
KVIDX_DECLARE(chime_k32)

#endif
