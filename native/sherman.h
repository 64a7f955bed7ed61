/* sherman.h - the sherman index (B+tree, sorted 1 KB leaves), for 8- and 32-byte keys.
 * The implementation is btree_core.inc with btree_leaf_sherman.inc, compiled by sherman_k8.c
 * and sherman_k32.c. */
#ifndef KVDM_SHERMAN_H
#define KVDM_SHERMAN_H

#include "kvidx.h"

KVIDX_DECLARE(sherman_k8)
KVIDX_DECLARE(sherman_k32)

#endif
