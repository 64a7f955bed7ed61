/* dm_verbs.c - verbs backend of dm.h on libibverbs (RC queue pairs to passive memory nodes).
 * Built when rdma-core's headers are present (KVDM_HAVE_VERBS); otherwise attaching a
 * verbs:// node fails with a message saying what to install. */
#include "dm_internal.h"

/* TODO(verbs): the real backend goes under #ifdef KVDM_HAVE_VERBS; until then, always the stub. */
int dm_verbs_attach(dm_ctx *ctx, const char *uri, dm_node **out) {
    *out = NULL;
    return dm_fail(ctx, DM_ENOSYS,
                   "cannot attach '%s': kvdm was built without rdma-core. Install libibverbs-dev, "
                   "librdmacm-dev and ibverbs-providers (apt-get install ...), then rebuild (pip install -e .)",
                   uri);
}
