/* http_tls.h: the HTTPS front end's certificate and key, re-read when their files change
 * (http_tls.c; one HTTPS front end per process). */
#ifndef MR_HTTP_TLS_H
#define MR_HTTP_TLS_H

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

#include "mr_err.h"

/* Loads the pair (MR_ENOTFOUND/MR_EFORMAT naming the file, or a key that does not match the
 * certificate); MR_ESTATE when already started. */
int mr__https_cert_start(const char *cert_path, const char *key_path, mr_err *err);
/* The GnuTLS retrieve callback for MHD_OPTION_HTTPS_CERT_CALLBACK: the newest valid pair,
 * after a look at the files at most once a second. */
int mr__https_cert_retrieve(gnutls_session_t s, const gnutls_datum_t *req_ca_dn, int nreqs,
                            const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                            gnutls_pcert_st **pcert, unsigned int *pcert_length,
                            gnutls_privkey_t *pkey);
/* Frees every pair loaded; after the daemon stopped. */
void mr__https_cert_stop(void);

#endif
