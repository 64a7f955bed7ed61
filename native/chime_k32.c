/* chime_k32.c - chime compiled for 32-byte keys (the implementation is chime_internal.h). */
#define KVDM_KEY_BYTES 32
#include "chime.h"
#include "chime_internal.h"
