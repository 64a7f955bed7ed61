/* chime_k8.c - chime compiled for 8-byte keys (the implementation is chime_internal.h). */
#define KVDM_KEY_BYTES 8
#include "chime.h"
#include "chime_internal.h"
