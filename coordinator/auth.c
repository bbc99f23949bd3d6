/* auth.c: the coordinator's API-key checks (security.api_keys; docs/security.md).
 *
 * Without a key file every call is let through. With one, every Ranker call (Rerank,
 * RerankStream, Info; not grpc.health.v1, which the rpc layer answers itself) must carry
 * "authorization: Bearer KEY" for a key of the file, else UNAUTHENTICATED; a Rerank whose tier
 * (after defaults) is not in the key's list gets PERMISSION_DENIED. The key file is re-read
 * when its inode, size or mtime changes (checked at most once a second, on a call); a new
 * file that does not parse, or names a tier the config does not have, is logged and the
 * previous keys stay in force. Messages and logs name the key's entry, never the key. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "apikeys.h"
#include "coord_internal.h"
#include "log.h"

#define AUTH_VALUE_MAX 4200

struct mr__auth {
    char path[MR_CC_PATH];
    pthread_rwlock_t lock;      /* keys */
    mr_apikeys *keys;
    pthread_mutex_t mu;         /* the fields below */
    struct stat sb;             /* of the file last loaded */
    double next_check;          /* monotonic ms */
};

/* Loads path and checks its tiers against the config. */
static int load_checked(const mr_coord *c, const char *path, mr_apikeys **out, mr_err *err) {
    int rc = mr_apikeys_load(out, path, err);
    if (rc) return rc;
    for (int i = 0; i < mr_apikeys_count(*out); i++)
        for (int t = 0; t < mr_apikeys_n_tiers(*out, i); t++)
            if (mr_coord_config_tier(&c->cfg, mr_apikeys_tier(*out, i, t)) < 0) {
                rc = mr_err_set(err, MR_EINVAL, "%s: [%d].tiers[%d]: unknown tier '%s' (the "
                                "config's tiers: see %s)", path, i, t,
                                mr_apikeys_tier(*out, i, t), c->cfg.path);
                mr_apikeys_free(*out);
                *out = NULL;
                return rc;
            }
    return 0;
}

int mr__auth_new(mr_coord *c, mr_err *err) {
    if (!*c->cfg.security.api_keys) return 0;
    struct mr__auth *a = calloc(1, sizeof *a);
    if (!a) return mr_err_set(err, MR_ENOMEM, "coordinator: out of memory");
    snprintf(a->path, sizeof a->path, "%s", c->cfg.security.api_keys);
    pthread_rwlock_init(&a->lock, NULL);
    pthread_mutex_init(&a->mu, NULL);
    stat(a->path, &a->sb);
    int rc = load_checked(c, a->path, &a->keys, err);
    c->auth = a;   /* freed by mr__auth_free also on failure */
    if (!rc)
        mr_log(MR_LOG_INFO, "api_keys_loaded", "%d API keys from %s%s\n", mr_apikeys_count(a->keys),
                a->path, *c->cfg.security.tls_cert ? "" : " (warning: no security.tls: keys "
                "cross the network in clear text)");
    return rc;
}

void mr__auth_free(mr_coord *c) {
    struct mr__auth *a = c->auth;
    if (!a) return;
    mr_apikeys_free(a->keys);
    pthread_rwlock_destroy(&a->lock);
    pthread_mutex_destroy(&a->mu);
    free(a);
    c->auth = NULL;
}

/* Re-reads the key file when it changed (at most once a second). */
static void maybe_reload(mr_coord *c, struct mr__auth *a) {
    double now = mr__now_ms();
    pthread_mutex_lock(&a->mu);
    struct stat sb;
    int changed = 0;
    if (now >= a->next_check) {
        a->next_check = now + 1000;
        changed = !stat(a->path, &sb) &&
                  (sb.st_ino != a->sb.st_ino || sb.st_size != a->sb.st_size ||
                   sb.st_mtim.tv_sec != a->sb.st_mtim.tv_sec ||
                   sb.st_mtim.tv_nsec != a->sb.st_mtim.tv_nsec);
        if (changed) a->sb = sb;   /* a bad file is reported once, not on every call */
    }
    pthread_mutex_unlock(&a->mu);
    if (!changed) return;
    mr_apikeys *k = NULL;
    mr_err err = {0};
    if (load_checked(c, a->path, &k, &err)) {
        mr_log(MR_LOG_WARN, "api_keys_reload_failed", "API keys not reloaded, the previous ones stay: %s\n",
                err.msg);
        return;
    }
    pthread_rwlock_wrlock(&a->lock);
    mr_apikeys *old = a->keys;
    a->keys = k;
    pthread_rwlock_unlock(&a->lock);
    mr_apikeys_free(old);
    mr_log(MR_LOG_INFO, "api_keys_reloaded", "%s changed: %d API keys\n", a->path,
            mr_apikeys_count(k));
}

/* The entry of the call's key (under a's read lock), or -1. */
static int key_of(struct mr__auth *a, const mr__sink *s) {
    char *v = malloc(AUTH_VALUE_MAX);
    if (!v) return -1;
    int n = s->ops->metadata(s->ctx, "authorization", v, AUTH_VALUE_MAX);
    int idx = -1;
    if (n > 0 && n < AUTH_VALUE_MAX) {
        size_t klen;
        const char *k = mr_apikeys_bearer(v, &klen);
        if (k) idx = mr_apikeys_find(a->keys, k, klen);
    }
    memset(v, 0, AUTH_VALUE_MAX);
    free(v);
    return idx;
}

int mr__auth_check(mr_coord *c, const mr__sink *s, int count_ok) {
    struct mr__auth *a = c->auth;
    if (!a) return 1;
    maybe_reload(c, a);
    pthread_rwlock_rdlock(&a->lock);
    int idx = key_of(a, s);
    char name[MR_APIKEYS_NAME] = "";
    if (idx >= 0) snprintf(name, sizeof name, "%s", mr_apikeys_name(a->keys, idx));
    pthread_rwlock_unlock(&a->lock);
    if (idx < 0) {
        mr_coord_metrics_auth(c->metrics, NULL, 0);
        return 0;
    }
    if (count_ok) mr_coord_metrics_auth(c->metrics, name, 0);
    return 1;
}

int mr__auth_call(mr_coord *c, mr_rpc_call *call, int count_ok) {
    mr__sink s = mr__sink_grpc(call);
    if (mr__auth_check(c, &s, count_ok)) return 1;
    mr_rpc_call_fail(call, GRPC_STATUS_UNAUTHENTICATED, MR__AUTH_MISSING);
    return 0;
}

int mr__auth_tier(mr_coord *c, const mr__sink *s, int tier, grpc_status_code *code, char *msg,
                  size_t cap) {
    struct mr__auth *a = c->auth;
    if (!a) return 0;
    const char *tn = c->cfg.tiers[tier].name;
    pthread_rwlock_rdlock(&a->lock);
    int idx = key_of(a, s);
    int ok = idx >= 0 && mr_apikeys_allows(a->keys, idx, tn);
    char name[MR_APIKEYS_NAME] = "";
    if (idx >= 0) snprintf(name, sizeof name, "%s", mr_apikeys_name(a->keys, idx));
    pthread_rwlock_unlock(&a->lock);
    if (idx < 0) {   /* the key file changed between the two checks */
        mr_coord_metrics_auth(c->metrics, NULL, 0);
        *code = GRPC_STATUS_UNAUTHENTICATED;
        snprintf(msg, cap, "missing or unknown API key");
        return -1;
    }
    mr_coord_metrics_auth(c->metrics, name, !ok);
    if (ok) return 0;
    *code = GRPC_STATUS_PERMISSION_DENIED;
    snprintf(msg, cap, "API key '%s' may not use tier '%s'", name, tn);
    return -1;
}
