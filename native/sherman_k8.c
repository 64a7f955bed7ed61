/* sherman_k8.c - sherman compiled for 8-byte keys (the implementation is kvidx_btree_internal.h). */
#define KVDM_KEY_BYTES 8
#define KVDM_SHERMAN 1
#include "sherman.h"
#include "kvidx_btree_internal.h"
