/* tls.c: gRPC TLS credentials from PEM files, with reloading (see tls.h).
 *
 * The server keeps the paths and a signature (inode, size, mtime) of each file. gRPC core
 * calls fetch() before every handshake; at most once a second fetch() stats the files, and
 * when a signature changed it reads them all, checks that the key matches the certificate
 * (OpenSSL's X509_check_private_key: a rotation caught between writing the certificate and
 * the key must not break handshakes) and hands gRPC a new certificate config. Until the new
 * files are consistent the previous config stays in use. Client channels use gRPC's own
 * file-watcher certificate provider, which does the same for the client side. */
#define _GNU_SOURCE
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define PEM_MAX (1 << 20)

typedef struct file_sig {
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_sig;

struct mr_rpc_tls_server {
    char *path[3];              /* cert, key, client_ca (NULL) */
    char what[64];
    int require_client;
    pthread_mutex_t mu;
    file_sig sig[3];            /* of the files last loaded */
    file_sig bad_sig[3];        /* of the last inconsistent set (logged once) */
    double next_check;          /* monotonic seconds */
    int delivered;              /* the first config went to gRPC */
    long reloads;
};

static const char *const field_name[3] = {"cert", "key", "client_ca"};

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int mr_rpc_tls_read_pem(const char *path, const char *field, char **out, mr_err *err) {
    *out = NULL;
    if (!path || !*path) return mr_err_set(err, MR_EINVAL, "tls: %s: no file given", field);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mr_err_errno(err, "tls: %s %s", field, path);
    char *buf = malloc(PEM_MAX + 1);
    if (!buf) {
        fclose(fp);
        return mr_err_set(err, MR_ENOMEM, "tls: %s %s: out of memory", field, path);
    }
    size_t n = fread(buf, 1, PEM_MAX + 1, fp);
    int rd = ferror(fp);
    fclose(fp);
    if (rd) {
        free(buf);
        return mr_err_set(err, MR_EIO, "tls: %s %s: read error", field, path);
    }
    if (n > PEM_MAX) {
        free(buf);
        return mr_err_set(err, MR_ERANGE, "tls: %s %s: larger than 1 MiB", field, path);
    }
    buf[n] = 0;
    if (!strstr(buf, "-----BEGIN ")) {
        free(buf);
        return mr_err_set(err, MR_EFORMAT, "tls: %s %s: not a PEM file (no -----BEGIN line)",
                          field, path);
    }
    *out = buf;
    return 0;
}

/* 0 when the PEM private key matches the first certificate of the PEM chain. */
static int key_matches(const char *cert_pem, const char *key_pem, const char *what,
                       const char *cert_path, const char *key_path, mr_err *err) {
    int rc = 0;
    BIO *cb = BIO_new_mem_buf(cert_pem, -1), *kb = BIO_new_mem_buf(key_pem, -1);
    X509 *x = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    if (!x) rc = mr_err_set(err, MR_EFORMAT, "tls: %s.cert %s: no readable certificate", what,
                            cert_path);
    else if (!k) rc = mr_err_set(err, MR_EFORMAT, "tls: %s.key %s: no readable private key "
                                 "(encrypted keys are not supported)", what, key_path);
    else if (X509_check_private_key(x, k) != 1)
        rc = mr_err_set(err, MR_EFORMAT, "tls: %s.key %s does not match %s.cert %s", what,
                        key_path, what, cert_path);
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    BIO_free(cb);
    BIO_free(kb);
    return rc;
}

static int stat_sig(const char *path, file_sig *s) {
    struct stat sb;
    memset(s, 0, sizeof *s);
    if (!path) return 0;
    if (stat(path, &sb)) return -1;
    s->ino = sb.st_ino;
    s->size = sb.st_size;
    s->mtime = sb.st_mtim;
    return 0;
}

static int sig_eq(const file_sig *a, const file_sig *b) {
    return a->ino == b->ino && a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Reads the three files into a new gRPC config (*cfg), after checking them. */
static int load_config(mr_rpc_tls_server *t, grpc_ssl_server_certificate_config **cfg,
                       file_sig sig[3], mr_err *err) {
    char *pem[3] = {0};
    int rc = 0;
    *cfg = NULL;
    for (int i = 0; i < 3 && !rc; i++) {
        if (!t->path[i]) continue;
        char field[96];
        snprintf(field, sizeof field, "%s.%s", t->what, field_name[i]);
        if (stat_sig(t->path[i], &sig[i])) rc = mr_err_errno(err, "tls: %s %s", field, t->path[i]);
        else rc = mr_rpc_tls_read_pem(t->path[i], field, &pem[i], err);
    }
    if (!rc) rc = key_matches(pem[0], pem[1], t->what, t->path[0], t->path[1], err);
    if (!rc) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = pem[1], .cert_chain = pem[0]};
        *cfg = grpc_ssl_server_certificate_config_create(pem[2], &pair, 1);
        if (!*cfg) rc = mr_err_set(err, MR_ENOMEM, "tls: %s: cannot build the config", t->what);
    }
    for (int i = 0; i < 3; i++) {
        if (pem[i]) memset(pem[i], 0, strlen(pem[i]));   /* key material off the heap */
        free(pem[i]);
    }
    return rc;
}

static grpc_ssl_certificate_config_reload_status fetch(void *user,
                                                       grpc_ssl_server_certificate_config **cfg) {
    mr_rpc_tls_server *t = user;
    grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    pthread_mutex_lock(&t->mu);
    double now = mono_s();
    if (t->delivered && now < t->next_check) goto out;
    t->next_check = now + 1.0;
    file_sig cur[3];
    int changed = !t->delivered;
    for (int i = 0; i < 3; i++) {
        if (stat_sig(t->path[i], &cur[i])) {   /* mid-rename: try again later */
            if (!t->delivered) st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
            goto out;
        }
        if (!sig_eq(&cur[i], &t->sig[i])) changed = 1;
    }
    if (!changed) goto out;
    mr_err err = {0};
    file_sig got[3];
    if (load_config(t, cfg, got, &err)) {
        int logged = 1;
        for (int i = 0; i < 3; i++) logged &= sig_eq(&cur[i], &t->bad_sig[i]);
        if (!logged)
            fprintf(stderr, "mrank tls: %s: keeping the previous certificates: %s\n", t->what,
                    err.msg);
        memcpy(t->bad_sig, cur, sizeof cur);
        st = t->delivered ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED
                          : GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
        goto out;
    }
    memcpy(t->sig, got, sizeof got);
    if (t->delivered) {
        t->reloads++;
        fprintf(stderr, "mrank tls: %s: certificate files changed: reloaded\n", t->what);
    }
    t->delivered = 1;
    st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
out:
    pthread_mutex_unlock(&t->mu);
    return st;
}

int mr_rpc_tls_server_new(mr_rpc_tls_server **out, const char *cert, const char *key,
                          const char *client_ca, const char *what, mr_err *err) {
    *out = NULL;
    mr_rpc_tls_server *t = calloc(1, sizeof *t);
    if (!t) return mr_err_set(err, MR_ENOMEM, "tls: out of memory");
    snprintf(t->what, sizeof t->what, "%s", what && *what ? what : "tls");
    pthread_mutex_init(&t->mu, NULL);
    const char *p[3] = {cert, key, client_ca && *client_ca ? client_ca : NULL};
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++) {
        if (!p[i]) {
            if (i < 2) rc = mr_err_set(err, MR_EINVAL, "tls: %s.%s: missing", t->what,
                                       field_name[i]);
            continue;
        }
        if (!(t->path[i] = strdup(p[i]))) rc = mr_err_set(err, MR_ENOMEM, "tls: out of memory");
    }
    t->require_client = t->path[2] != NULL;
    grpc_ssl_server_certificate_config *cfg = NULL;
    file_sig sig[3];
    if (!rc) rc = load_config(t, &cfg, sig, err);   /* fail at start, naming the file */
    if (cfg) grpc_ssl_server_certificate_config_destroy(cfg);
    if (rc) {
        mr_rpc_tls_server_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

long mr_rpc_tls_server_reloads(const mr_rpc_tls_server *t) {
    pthread_mutex_lock((pthread_mutex_t *)&t->mu);
    long n = t->reloads;
    pthread_mutex_unlock((pthread_mutex_t *)&t->mu);
    return n;
}

void mr_rpc_tls_server_free(mr_rpc_tls_server *t) {
    if (!t) return;
    for (int i = 0; i < 3; i++) free(t->path[i]);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

struct grpc_server_credentials *mr__rpc_tls_server_credentials(mr_rpc_tls_server *t) {
    grpc_ssl_server_credentials_options *o =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            t->require_client ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            fetch, t);
    return o ? grpc_ssl_server_credentials_create_with_options(o) : NULL;
}

int mr_rpc_tls_client_check(const mr_rpc_tls_client *c, mr_err *err) {
    if (!c) return 0;
    if (!c->cert != !c->key)
        return mr_err_set(err, MR_EINVAL, "tls: a client certificate needs its key (and the "
                          "key its certificate)");
    const char *p[3] = {c->ca, c->cert, c->key};
    const char *f[3] = {"ca", "cert", "key"};
    for (int i = 0; i < 3; i++) {
        if (!p[i]) continue;
        char *pem = NULL;
        int rc = mr_rpc_tls_read_pem(p[i], f[i], &pem, err);
        if (pem) memset(pem, 0, strlen(pem));
        free(pem);
        if (rc) return rc;
    }
    return 0;
}

struct grpc_channel_credentials *mr__rpc_tls_client_credentials(const mr_rpc_tls_client *c,
                                                                mr_err *err) {
    if (mr_rpc_tls_client_check(c, err)) return NULL;
    grpc_tls_credentials_options *o = grpc_tls_credentials_options_create();
    grpc_tls_certificate_provider *p =
        grpc_tls_certificate_provider_file_watcher_create(c->key, c->cert, c->ca, 1);
    if (!o || !p) {
        if (p) grpc_tls_certificate_provider_release(p);
        mr_err_set(err, MR_EIO, "tls: cannot build the client credentials");
        return NULL;
    }
    grpc_tls_credentials_options_set_certificate_provider(o, p);
    if (c->ca) grpc_tls_credentials_options_watch_root_certs(o);
    if (c->cert) grpc_tls_credentials_options_watch_identity_key_cert_pairs(o);
    if (c->skip_verify) {
        grpc_tls_credentials_options_set_verify_server_cert(o, 0);
        grpc_tls_certificate_verifier *v = grpc_tls_certificate_verifier_no_op_create();
        grpc_tls_credentials_options_set_certificate_verifier(o, v);
        grpc_tls_certificate_verifier_release(v);
        grpc_tls_credentials_options_set_check_call_host(o, 0);
    }   /* else gRPC's default: verify the chain and the host name */
    grpc_channel_credentials *cr = grpc_tls_credentials_create(o);
    grpc_tls_certificate_provider_release(p);
    if (!cr) mr_err_set(err, MR_EIO, "tls: cannot build the client credentials");
    return cr;
}
