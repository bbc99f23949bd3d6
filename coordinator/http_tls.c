/* http_tls.c: the HTTPS port's certificate and key, re-read when their files change, as the
 * gRPC port's are (rpc/tls.c): cert-manager rotation needs no restart.
 *
 * libmicrohttpd hands the choice of certificate to a GnuTLS retrieve callback
 * (MHD_OPTION_HTTPS_CERT_CALLBACK), called once per handshake. The callback looks at the two
 * files at most once a second (inode, size, mtime); when they changed it loads the pair, and
 * uses it only when the key matches the first certificate (a rotation caught half-written
 * keeps the previous pair, as rpc/tls.c does). Pairs handed to GnuTLS stay alive until the
 * front end stops, since a handshake in progress may still hold the previous one; at most
 * MAX_GENERATIONS are loaded, after which changes are ignored with a log line. The callback
 * has no user pointer, so the state is one per process: the coordinator has one HTTP front
 * end. The client CA (tls.client_ca) is read once at start. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

#include "http_tls.h"
#include "log.h"
#include "textfile.h"

#define MAX_CHAIN 8
#define MAX_GENERATIONS 256
#define PEM_LIMIT (1 << 20)
#define CHECK_EVERY_S 1.0

typedef struct gen {
    gnutls_pcert_st pcert[MAX_CHAIN];
    unsigned n;
    gnutls_privkey_t key;
    struct gen *prev;
} gen;

static struct {
    pthread_mutex_t mu;
    char cert_path[4096], key_path[4096];
    gen *cur;                 /* newest valid pair; older ones behind cur->prev */
    int n_gen;
    double checked;           /* monotonic s of the last look at the files */
    char sig[128];            /* the files' identity when cur was loaded */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The two files' identity (inode, size, mtime); "" when either cannot be stat'ed. */
static void file_sig(char *buf, size_t cap) {
    struct stat a, b;
    if (stat(g.cert_path, &a) || stat(g.key_path, &b)) {
        buf[0] = 0;
        return;
    }
    snprintf(buf, cap, "%lu:%lld:%lld.%ld/%lu:%lld:%lld.%ld", (unsigned long)a.st_ino,
             (long long)a.st_size, (long long)a.st_mtim.tv_sec, a.st_mtim.tv_nsec,
             (unsigned long)b.st_ino, (long long)b.st_size, (long long)b.st_mtim.tv_sec,
             b.st_mtim.tv_nsec);
}

static void gen_free(gen *x) {
    for (unsigned i = 0; i < x->n; i++) gnutls_pcert_deinit(&x->pcert[i]);
    if (x->key) gnutls_privkey_deinit(x->key);
    free(x);
}

/* 1 when key's public half is the certificate's. */
static int key_matches(gnutls_privkey_t key, gnutls_pcert_st *cert) {
    gnutls_pubkey_t pk;
    if (gnutls_pubkey_init(&pk) < 0) return 0;
    unsigned char a[64], b[64];
    size_t na = sizeof a, nb = sizeof b;
    int ok = gnutls_pubkey_import_privkey(pk, key, 0, 0) >= 0 &&
             gnutls_pubkey_get_key_id(pk, 0, a, &na) >= 0 &&
             gnutls_pubkey_get_key_id(cert->pubkey, 0, b, &nb) >= 0 && na == nb &&
             !memcmp(a, b, na);
    gnutls_pubkey_deinit(pk);
    return ok;
}

/* Loads the pair from the files into a new generation; 0, or an MR_E* code with err set. */
static int load(gen **out, mr_err *err) {
    char *cert = NULL, *key = NULL;
    int rc;
    *out = NULL;
    if ((rc = mr__read_text(g.cert_path, PEM_LIMIT, &cert, NULL, err)) ||
        (rc = mr__read_text(g.key_path, PEM_LIMIT, &key, NULL, err)))
        goto done;
    gen *x = calloc(1, sizeof *x);
    if (!x) {
        rc = mr_err_set(err, MR_ENOMEM, "https: out of memory");
        goto done;
    }
    gnutls_datum_t dc = {(unsigned char *)cert, (unsigned)strlen(cert)};
    gnutls_datum_t dk = {(unsigned char *)key, (unsigned)strlen(key)};
    x->n = MAX_CHAIN;
    if (gnutls_pcert_list_import_x509_raw(x->pcert, &x->n, &dc, GNUTLS_X509_FMT_PEM, 0) < 0 ||
        !x->n) {
        x->n = 0;
        gen_free(x);
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a PEM certificate chain (at most %d)",
                        g.cert_path, MAX_CHAIN);
        goto done;
    }
    if (gnutls_privkey_init(&x->key) < 0 ||
        gnutls_privkey_import_x509_raw(x->key, &dk, GNUTLS_X509_FMT_PEM, NULL, 0) < 0) {
        gen_free(x);
        rc = mr_err_set(err, MR_EFORMAT, "%s: not a PEM private key", g.key_path);
        goto done;
    }
    if (!key_matches(x->key, &x->pcert[0])) {
        gen_free(x);
        rc = mr_err_set(err, MR_EFORMAT, "%s: the key does not match the certificate %s",
                        g.key_path, g.cert_path);
        goto done;
    }
    *out = x;
done:
    free(cert);
    free(key);
    return rc;
}

int mr__https_cert_start(const char *cert_path, const char *key_path, mr_err *err) {
    pthread_mutex_lock(&g.mu);
    int rc = 0;
    if (g.cur) {
        rc = mr_err_set(err, MR_ESTATE, "https: one HTTPS front end per process");
        goto done;
    }
    snprintf(g.cert_path, sizeof g.cert_path, "%s", cert_path);
    snprintf(g.key_path, sizeof g.key_path, "%s", key_path);
    file_sig(g.sig, sizeof g.sig);
    if ((rc = load(&g.cur, err))) goto done;
    g.n_gen = 1;
    g.checked = now_s();
done:
    pthread_mutex_unlock(&g.mu);
    return rc;
}

/* Under g.mu: a newer pair when the files changed and it loads (else the current one stays). */
static void maybe_reload(void) {
    double t = now_s();
    if (t - g.checked < CHECK_EVERY_S) return;
    g.checked = t;
    char sig[sizeof g.sig];
    file_sig(sig, sizeof sig);
    if (!*sig || !strcmp(sig, g.sig)) return;
    if (g.n_gen >= MAX_GENERATIONS) {
        if (g.n_gen++ == MAX_GENERATIONS)
            mr_log(MR_LOG_WARN, "https_reload", "%s changed %d times: no more reloads until a "
                   "restart\n", g.cert_path, MAX_GENERATIONS);
        return;
    }
    gen *x = NULL;
    mr_err err = {0};
    if (load(&x, &err)) {   /* half-written rotation: keep serving the previous pair */
        mr_log(MR_LOG_WARN, "https_reload", "%s (the previous certificate stays)\n", err.msg);
        return;
    }
    memcpy(g.sig, sig, sizeof g.sig);
    x->prev = g.cur;
    g.cur = x;
    g.n_gen++;
    mr_log(MR_LOG_INFO, "https_reload", "%s: new certificate in use\n", g.cert_path);
}

int mr__https_cert_retrieve(gnutls_session_t s, const gnutls_datum_t *req_ca_dn, int nreqs,
                            const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                            gnutls_pcert_st **pcert, unsigned int *pcert_length,
                            gnutls_privkey_t *pkey) {
    (void)s, (void)req_ca_dn, (void)nreqs, (void)pk_algos, (void)pk_algos_length;
    pthread_mutex_lock(&g.mu);
    int rc = -1;
    if (g.cur) {
        maybe_reload();
        *pcert = g.cur->pcert;
        *pcert_length = g.cur->n;
        *pkey = g.cur->key;
        rc = 0;
    }
    pthread_mutex_unlock(&g.mu);
    return rc;
}

void mr__https_cert_stop(void) {
    pthread_mutex_lock(&g.mu);
    for (gen *x = g.cur, *p; x; x = p) {
        p = x->prev;
        gen_free(x);
    }
    g.cur = NULL;
    g.n_gen = 0;
    pthread_mutex_unlock(&g.mu);
}
