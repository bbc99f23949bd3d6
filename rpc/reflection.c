/* reflection.c: gRPC server reflection over the descriptor set embedded at build time (see
 * reflection.h). v1 and v1alpha share one wire format, so both paths use v1's messages.
 *
 * The set is unpacked once (pthread_once) into an immutable index: every file with its
 * serialized bytes. A symbol is looked up by walking each file's package, messages (nested),
 * enums, fields, services and methods; the answer is the file and its imports, transitively,
 * each once. */
#define _GNU_SOURCE
#include "reflection.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

/* cmake/embed.cmake's output (CMakeLists.txt) */
extern const unsigned char mr_rpc_descriptor_set[];
extern const unsigned long mr_rpc_descriptor_set_len;

typedef Google__Protobuf__FileDescriptorProto file_proto;
typedef Google__Protobuf__DescriptorProto msg_proto;

static struct {
    Google__Protobuf__FileDescriptorSet *set;
    ProtobufCBinaryData *bytes;   /* per file: its serialized FileDescriptorProto */
} g_index;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void index_init(void) {
    Google__Protobuf__FileDescriptorSet *set = google__protobuf__file_descriptor_set__unpack(
        NULL, mr_rpc_descriptor_set_len, mr_rpc_descriptor_set);
    if (!set) return;
    ProtobufCBinaryData *b = calloc(set->n_file ? set->n_file : 1, sizeof *b);
    for (size_t i = 0; b && i < set->n_file; i++) {
        b[i].len = google__protobuf__file_descriptor_proto__get_packed_size(set->file[i]);
        if (!(b[i].data = malloc(b[i].len ? b[i].len : 1))) {
            for (size_t k = 0; k < i; k++) free(b[k].data);
            free(b);
            b = NULL;
            break;
        }
        google__protobuf__file_descriptor_proto__pack(set->file[i], b[i].data);
    }
    if (!b) {
        google__protobuf__file_descriptor_set__free_unpacked(set, NULL);
        return;
    }
    g_index.set = set;
    g_index.bytes = b;
}

/* sym starts with name followed by '.' (returns what follows) or ends there (returns ""). */
static const char *strip(const char *sym, const char *name) {
    size_t n = strlen(name);
    if (strncmp(sym, name, n)) return NULL;
    if (!sym[n]) return "";
    return sym[n] == '.' && sym[n + 1] ? sym + n + 1 : NULL;   /* "a." names nothing */
}

static int msg_has(const msg_proto *m, const char *sym) {
    const char *rest = strip(sym, m->name ? m->name : "");
    if (!rest) return 0;
    if (!*rest) return 1;
    for (size_t i = 0; i < m->n_field; i++)
        if (m->field[i]->name && !strcmp(rest, m->field[i]->name)) return 1;
    for (size_t i = 0; i < m->n_enum_type; i++)
        if (m->enum_type[i]->name && !strcmp(rest, m->enum_type[i]->name)) return 1;
    for (size_t i = 0; i < m->n_nested_type; i++)
        if (msg_has(m->nested_type[i], rest)) return 1;
    return 0;
}

static int file_has(const file_proto *f, const char *sym) {
    const char *rel = f->package && *f->package ? strip(sym, f->package) : sym;
    if (!rel || !*rel) return 0;
    for (size_t i = 0; i < f->n_message_type; i++)
        if (msg_has(f->message_type[i], rel)) return 1;
    for (size_t i = 0; i < f->n_enum_type; i++)
        if (f->enum_type[i]->name && !strcmp(rel, f->enum_type[i]->name)) return 1;
    for (size_t i = 0; i < f->n_service; i++) {
        const char *rest = strip(rel, f->service[i]->name ? f->service[i]->name : "");
        if (!rest) continue;
        if (!*rest) return 1;
        for (size_t k = 0; k < f->service[i]->n_method; k++)
            if (f->service[i]->method[k]->name && !strcmp(rest, f->service[i]->method[k]->name))
                return 1;
    }
    return 0;
}

static int file_index(const char *name) {
    for (size_t i = 0; i < g_index.set->n_file; i++)
        if (g_index.set->file[i]->name && !strcmp(g_index.set->file[i]->name, name)) return (int)i;
    return -1;
}

/* Appends file i, then its imports (depth first), each once: order[*n], seen[] per file. */
static void closure(int i, int *order, int *n, char *seen) {
    if (i < 0 || seen[i]) return;
    seen[i] = 1;
    order[(*n)++] = i;
    const file_proto *f = g_index.set->file[i];
    for (size_t d = 0; d < f->n_dependency; d++) closure(file_index(f->dependency[d]), order, n, seen);
}

int mr__rpc_reflection_answer(const uint8_t *req, size_t len, const char *const *services,
                              int n_services, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    pthread_once(&g_once, index_init);
    if (!g_index.set) return MR_EIO;
    Grpc__Reflection__V1__ServerReflectionRequest *rq =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, len, req);
    if (!rq) return MR_EFORMAT;
    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fdr =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse lsr =
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse er = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse enr =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    size_t nf = g_index.set->n_file;
    int *order = calloc(nf + 1, sizeof *order);
    char *seen = calloc(nf + 1, 1);
    ProtobufCBinaryData *files = calloc(nf + 1, sizeof *files);
    Grpc__Reflection__V1__ServiceResponse *sr = calloc((size_t)n_services + 1, sizeof *sr);
    Grpc__Reflection__V1__ServiceResponse **srp = calloc((size_t)n_services + 1, sizeof *srp);
    char msg[300];
    int rc = MR_ENOMEM;
    if (!order || !seen || !files || !sr || !srp) goto done;
    /* the echo carries the request's known fields only: protobuf-c keeps unknown fields and
     * would pack them back, one of field number 0 included, which it then refuses to unpack
     * (fuzz/crashes/fuzz_reflection-crash-dca88c7d) */
    Grpc__Reflection__V1__ServerReflectionRequest echo = *rq;
    Grpc__Reflection__V1__ExtensionRequest ext;
    echo.base.n_unknown_fields = 0;
    echo.base.unknown_fields = NULL;
    if (rq->message_request_case ==
            GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION &&
        rq->file_containing_extension) {
        ext = *rq->file_containing_extension;
        ext.base.n_unknown_fields = 0;
        ext.base.unknown_fields = NULL;
        echo.file_containing_extension = &ext;
    }
    resp.valid_host = rq->host;
    resp.original_request = &echo;
    int found = -1;
    const char *what = "";
    switch (rq->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        for (int i = 0; i < n_services; i++) {
            grpc__reflection__v1__service_response__init(&sr[i]);
            sr[i].name = (char *)services[i];
            srp[i] = &sr[i];
        }
        lsr.n_service = (size_t)n_services;
        lsr.service = srp;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &lsr;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        what = rq->file_by_filename;
        found = file_index(what);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        what = rq->file_containing_symbol;
        for (size_t i = 0; i < nf && found < 0; i++)
            if (file_has(g_index.set->file[i], what)) found = (int)i;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        what = rq->all_extension_numbers_of_type;
        for (size_t i = 0; i < nf && found < 0; i++)
            if (file_has(g_index.set->file[i], what)) found = (int)i;
        if (found >= 0) {   /* a known type: no extensions are declared anywhere */
            enr.base_type_name = (char *)what;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            resp.all_extension_numbers_response = &enr;
        }
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        what = "extension";
        break;
    default: what = "(empty request)"; break;
    }
    if (resp.message_response_case ==
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET) {
        if (found >= 0) {
            int n = 0;
            closure(found, order, &n, seen);
            for (int i = 0; i < n; i++) files[i] = g_index.bytes[order[i]];
            fdr.n_file_descriptor_proto = (size_t)n;
            fdr.file_descriptor_proto = files;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
            resp.file_descriptor_response = &fdr;
        } else {
            int empty = rq->message_request_case ==
                        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET;
            snprintf(msg, sizeof msg, "%s%.200s", empty ? "" : "not found: ", what ? what : "");
            er.error_code = empty ? 3 /* INVALID_ARGUMENT */ : 5 /* NOT_FOUND */;
            er.error_message = msg;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
            resp.error_response = &er;
        }
    }
    *out_len = grpc__reflection__v1__server_reflection_response__get_packed_size(&resp);
    if (!(*out = malloc(*out_len ? *out_len : 1))) goto done;
    grpc__reflection__v1__server_reflection_response__pack(&resp, *out);
    rc = 0;
done:
    if (rc) *out_len = 0;
    free(order);
    free(seen);
    free(files);
    free(sr);
    free(srp);
    grpc__reflection__v1__server_reflection_request__free_unpacked(rq, NULL);
    return rc;
}

#define MAX_SERVICES 32

void mr__rpc_reflection_info(mr_rpc_call *call, void *user) {
    const mr_rpc_server *s = user;
    /* the services of the registered methods "/pkg.Service/Method", each once */
    char names[MAX_SERVICES][128];
    const char *services[MAX_SERVICES];
    int n = 0;
    for (int i = 0; i < mr_rpc_server_method_count(s) && n < MAX_SERVICES; i++) {
        const char *p = mr_rpc_server_method_path(s, i), *slash;
        if (!p || *p != '/' || !(slash = strchr(p + 1, '/')) || slash - p - 1 >= 128) continue;
        snprintf(names[n], sizeof names[n], "%.*s", (int)(slash - p - 1), p + 1);
        int dup = 0;
        for (int k = 0; k < n; k++) dup |= !strcmp(names[k], names[n]);
        if (!dup) {
            services[n] = names[n];
            n++;
        }
    }
    for (;;) {
        uint8_t *req = NULL, *out = NULL;
        size_t len = 0, out_len = 0;
        int rc = mr_rpc_call_read(call, &req, &len);
        if (rc == 1) {   /* the client closed its side: done */
            mr_rpc_call_finish(call, NULL, 0);
            return;
        }
        if (rc) {
            mr_rpc_call_fail(call, rc == MR_ENOMEM ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                                   : GRPC_STATUS_CANCELLED,
                             "reflection stream ended");
            return;
        }
        rc = mr__rpc_reflection_answer(req, len, services, n, &out, &out_len);
        free(req);
        if (rc) {
            mr_rpc_call_fail(call, rc == MR_EFORMAT ? GRPC_STATUS_INVALID_ARGUMENT
                                   : rc == MR_ENOMEM ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                                     : GRPC_STATUS_INTERNAL,
                             rc == MR_EFORMAT ? "malformed ServerReflectionRequest"
                                              : "reflection unavailable");
            return;
        }
        rc = mr_rpc_call_write(call, out, out_len);
        free(out);
        if (rc) {
            mr_rpc_call_fail(call, GRPC_STATUS_CANCELLED, "client gone");
            return;
        }
    }
}
