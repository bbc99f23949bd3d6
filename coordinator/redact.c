/* redact.c: keeps internal addresses out of client-facing error messages.
 *
 * A worker's failure reaches the coordinator as a gRPC status whose message may carry the
 * worker's address (gRPC's own "failed to connect to all addresses; last error: ... ipv4:
 * 127.0.0.1:7101: Connection refused", or a message naming the replica). Before a status goes
 * to a client, mr__redact replaces every configured replica target by "pool 'NAME' replica I"
 * and anything else that looks like an IP address (dotted quad or bracketed IPv6, with an
 * optional port, "ipv4:"/"ipv6:"/"unix:" targets) by "<internal address>"; the original text
 * goes to stderr for the operator. Stage and pool names stay. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "coord_internal.h"
#include "log.h"

#define REDACT_MAX 2048

/* Length of an address-like token at p (0 when none): a.b.c.d[:port], [v6][:port],
 * ipv4:..., ipv6:..., unix:... */
static size_t addr_len(const char *p) {
    const char *q = p;
    if (!strncmp(q, "ipv4:", 5) || !strncmp(q, "ipv6:", 5) || !strncmp(q, "unix:", 5)) {
        q += 5;
        while (*q && !isspace((unsigned char)*q) && *q != ',' && *q != ')' && *q != '\'' &&
               *q != '"')
            q++;
        return (size_t)(q - p);
    }
    if (*q == '[') {
        const char *e = strchr(q, ']');
        if (!e || e - q < 3 || !strchr(q, ':') || strchr(q, ':') > e) return 0;
        for (const char *r = q + 1; r < e; r++)
            if (!isxdigit((unsigned char)*r) && *r != ':' && *r != '.' && *r != '%') return 0;
        q = e + 1;
    } else {
        for (int part = 0; part < 4; part++) {
            int digits = 0;
            while (isdigit((unsigned char)*q) && digits < 4) q++, digits++;
            if (!digits || digits > 3) return 0;
            if (part < 3) {
                if (*q != '.') return 0;
                q++;
            }
        }
    }
    if (*q == ':' && isdigit((unsigned char)q[1])) {
        q++;
        while (isdigit((unsigned char)*q)) q++;
    }
    return (size_t)(q - p);
}

int mr__redact(const mr_coord *c, char *msg, size_t cap) {
    char out[REDACT_MAX];
    size_t o = 0;
    int changed = 0;
    for (const char *p = msg; *p && o + 1 < sizeof out;) {
        size_t n = 0;
        char repl[160] = "";
        /* a configured replica target (longest first is not needed: targets are distinct) */
        for (int pi = 0; pi < c->cfg.n_pools && !n; pi++)
            for (int e = 0; e < c->pools[pi].n_ep && !n; e++) {
                const char *t = c->pools[pi].ep[e].target;
                size_t tl = strlen(t);
                if (tl && !strncmp(p, t, tl)) {
                    n = tl;
                    snprintf(repl, sizeof repl, "pool '%s' replica %d", c->cfg.pools[pi].name, e);
                }
            }
        int boundary = p == msg || !isalnum((unsigned char)p[-1]);
        if (!n && boundary && (n = addr_len(p))) snprintf(repl, sizeof repl, "<internal address>");
        if (n) {
            size_t rl = strlen(repl);
            if (o + rl >= sizeof out) break;
            memcpy(out + o, repl, rl);
            o += rl;
            p += n;
            changed = 1;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = 0;
    if (!changed) return 0;
    mr_log(MR_LOG_WARN, "client_error", "error for a client (addresses redacted in the reply): %s\n",
            msg);
    snprintf(msg, cap, "%s", out);
    return 1;
}
