/* chime_k32.c - chime compiled for 32-byte keys (the implementation is kvidx_btree_internal.h). */
#define KVDM_KEY_BYTES 32
#include "chime.h"
#include "kvidx_btree_internal.h"
