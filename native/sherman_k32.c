/* sherman_k32.c - sherman compiled for 32-byte keys (the implementation is kvidx_btree_internal.h). */
#define KVDM_KEY_BYTES 32
#define KVDM_SHERMAN 1
#include "sherman.h"
#include "kvidx_btree_internal.h"
