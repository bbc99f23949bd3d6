/* tls.h: TLS and mutual TLS for rpc.h's servers and channels, from PEM file paths.
 *
 * Server side: mr_rpc_tls_server reads a certificate chain, its private key and optionally a
 * client CA bundle (then clients must present a certificate signed by it: mTLS). It is handed
 * to mr_rpc_server_set_tls; gRPC core asks it for the certificate config on every new
 * handshake (grpc_ssl_server_credentials_create_with_options with a certificate config
 * fetcher), and it re-reads the files when their modification time, size or inode changed
 * (rotation by replacing or renaming files, as cert-manager does), at most once a second. A
 * rotation that cannot be read (a half-written key) keeps the previous certificates and logs
 * once to stderr; connections already open and their calls are never touched.
 *
 * Client side: mr_rpc_tls_client names a CA bundle to verify the server with (NULL: the
 * system roots), and optionally a client certificate and key (mTLS). Channels built from it
 * (mr_rpc_channel_new_tls) watch the files through gRPC's file-watcher certificate provider,
 * so a rotated client certificate is used by new connections too.
 *
 * Errors name the file and the field ("tls: --tls-key /x/key.pem: No such file or
 * directory"); nothing here logs a key or certificate body. No hand-written crypto: gRPC and
 * its TLS library do the work. */
#ifndef MR_RPC_TLS_H
#define MR_RPC_TLS_H

#include "mr_err.h"

typedef struct mr_rpc_tls_server mr_rpc_tls_server;

/* Reads and checks cert and key (and client_ca when not NULL/""); `what` names the config
 * fields in messages (e.g. "security.tls"). MR_ENOTFOUND/MR_EIO/MR_EFORMAT naming the file. */
int mr_rpc_tls_server_new(mr_rpc_tls_server **out, const char *cert, const char *key,
                          const char *client_ca, const char *what, mr_err *err);
/* How many times the certificate files were reloaded after a change (tests, metrics). */
long mr_rpc_tls_server_reloads(const mr_rpc_tls_server *t);
void mr_rpc_tls_server_free(mr_rpc_tls_server *t);

typedef struct mr_rpc_tls_client {
    const char *ca;             /* PEM bundle that verifies the server; NULL: system roots */
    const char *cert, *key;     /* client identity for mTLS; both NULL: none */
    int skip_verify;            /* 1: do not check the server's certificate at all (only for
                                 * a supervisor talking to its own child over loopback) */
} mr_rpc_tls_client;

/* Checks that the named files are readable PEM; MR_ENOTFOUND/MR_EIO/MR_EFORMAT naming the
 * file. Channels check this before connecting. */
int mr_rpc_tls_client_check(const mr_rpc_tls_client *c, mr_err *err);

/* Reads a whole PEM file into a malloc'd NUL-terminated string (at most 1 MiB) and checks it
 * holds a "-----BEGIN" block; `field` names it in messages. */
int mr_rpc_tls_read_pem(const char *path, const char *field, char **out, mr_err *err);

/* For rpc/server.c and rpc/client.c: the gRPC credentials (the caller releases them). The
 * server's credentials call back into t, which must outlive the gRPC server using them. */
struct grpc_server_credentials;
struct grpc_channel_credentials;
struct grpc_server_credentials *mr__rpc_tls_server_credentials(mr_rpc_tls_server *t);
struct grpc_channel_credentials *mr__rpc_tls_client_credentials(const mr_rpc_tls_client *c,
                                                                mr_err *err);

#endif
