/* chime_k8.c - chime compiled for 8-byte keys (the implementation is kvidx_btree_internal.h). */
#define KVDM_KEY_BYTES 8
#include "chime.h"
#include "kvidx_btree_internal.h"
