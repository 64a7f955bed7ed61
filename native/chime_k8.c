/* chime_k8.c - chime compiled for 8-byte keys: the B-link core btree_core.inc with the
 * leaf format btree_leaf_chime.inc (the template contract is at the top of btree_core.inc). */
#define KVDM_KEY_BYTES 8
#include "chime.h"
#include "btree_core.inc"
