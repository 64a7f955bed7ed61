/* sherman_k32.c - sherman compiled for 32-byte keys: the B-link core btree_core.inc with the
 * leaf format btree_leaf_sherman.inc (the template contract is at the top of btree_core.inc). */
#define KVDM_KEY_BYTES 32
#define KVDM_SHERMAN 1
#include "sherman.h"
#include "btree_core.inc"
