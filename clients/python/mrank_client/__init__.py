"""mrank_client: Python client of mrank's public gRPC API (mrank.v1.Ranker on the coordinator).

  from mrank_client import Client
  with Client("127.0.0.1:7100") as c:
      r = c.rerank("what is a fox", ["a fox is a mammal", "paris is in france"], top_n=1)
      print(r.results[0].index, r.results[0].relevance_score)

AsyncClient has the same methods over grpc.aio (rerank and info are coroutines; rerank_stream
returns an async iterator). TLS: tls=True (the system's root CAs), ca= (PEM file of the CA that
signed the server), cert=/key= (a client certificate, mTLS); any of them turns TLS on.
api_key= (or $MRANK_API_KEY when api_key is not given) is sent as "authorization: Bearer KEY";
on a plaintext channel the key is refused (ValueError) unless insecure=True says to send it in
clear anyway. Every call has a deadline: its timeout=, else the client's timeout= (default
DEFAULT_TIMEOUT, 30 s; None: no deadline, and a tier without a budget may then wait forever).
Channels ping their connection every 30 s (the server accepts pings every second) and accept
answers up to 64 MiB, the server's limit. traceparent= continues a W3C trace. Errors are
grpc.RpcError (code() and details() name the problem; RESOURCE_EXHAUSTED carries
"retry-after-ms" in trailing metadata). Messages are mrank_client.pb (the module
mrank_client.mrank_pb2, generated from proto/mrank.proto when the package was built).
"""
import os
import ssl

import grpc

from . import mrank_pb2 as pb

__all__ = ["Client", "AsyncClient", "pb", "DEFAULT_TIMEOUT", "MAX_MESSAGE"]

RERANK = "/mrank.v1.Ranker/Rerank"
RERANK_STREAM = "/mrank.v1.Ranker/RerankStream"
INFO = "/mrank.v1.Ranker/Info"

DEFAULT_TIMEOUT = 30.0            # seconds: the deadline of a call that sets none
MAX_MESSAGE = 64 * 1024 * 1024    # the server's message limit (rpc/rpc.h MR_RPC_MAX_MESSAGE)
KEEPALIVE_MS = 30000              # ping interval; the server accepts one per second
KEEPALIVE_TIMEOUT_MS = 10000      # an unanswered ping this long closes the connection


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _system_roots():
    """The system's CA bundle (e.g. /etc/ssl/certs/ca-certificates.crt); None lets gRPC use
    its own default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or the bundle grpcio ships)."""
    paths = ssl.get_default_verify_paths()
    for f in (paths.cafile, paths.openssl_cafile):
        if f and os.path.isfile(f):
            return _read(f)
    return None


def _credentials(ca, cert, key, tls):
    if not (ca or cert or key or tls):
        return None
    if bool(cert) != bool(key):
        raise ValueError("mrank_client: cert and key go together (mTLS): pass both or neither")
    return grpc.ssl_channel_credentials(root_certificates=_read(ca) if ca else _system_roots(),
                                        private_key=_read(key) if key else None,
                                        certificate_chain=_read(cert) if cert else None)


_FIELDS = ("top_n", "profile", "tier", "request_id", "return_documents", "truncate",
           "overrides", "chunking")


def _request(query, documents, top_n=0, profile="", tier="", request_id="",
             return_documents=False, truncate=None, overrides=None, chunking=None, **unknown):
    """The RerankRequest of rerank and rerank_stream. documents: strings or {"text", "id"}
    dicts; truncate: "end" (default: cut the passage to the token budget) or "none"
    (INVALID_ARGUMENT when a pair does not fit), or a pb.Truncate value; overrides: dicts
    {"stage", "keep_top_k", "keep_fraction", "min_score"} (or pb.StageOverride), bounded
    per-stage changes of the profile; chunking: None (long documents cut at the token budget)
    or {"window", "stride", "max_chunks"} (docs/cluster.md "Chunking")."""
    if unknown:
        raise TypeError(f"mrank_client: unknown argument(s) {', '.join(sorted(unknown))}; "
                        f"the request fields are {', '.join(_FIELDS)}")
    req = pb.RerankRequest(query=query, top_n=top_n, profile=profile, tier=tier,
                           request_id=request_id, return_documents=return_documents)
    if isinstance(truncate, str):
        req.truncate = pb.Truncate.Value("TRUNCATE_" + truncate.upper())
    elif truncate is not None:
        req.truncate = truncate
    for o in overrides or ():
        if isinstance(o, pb.StageOverride):
            req.overrides.append(o)
            continue
        o = dict(o)
        min_score = o.pop("min_score", None)
        x = req.overrides.add(**o)
        if min_score is not None:
            x.has_min_score, x.min_score = True, min_score
    if chunking:
        req.chunking.CopyFrom(pb.Chunking(**chunking))
    for d in documents:
        if isinstance(d, str):
            req.documents.add(text=d)
        else:
            req.documents.add(text=d["text"], id=d.get("id", ""))
    return req


class _Base:
    def __init__(self, target, ca=None, cert=None, key=None, api_key=None, server_name=None,
                 tls=False, insecure=False, timeout=DEFAULT_TIMEOUT):
        self._creds = _credentials(ca, cert, key, tls)
        source = "api_key"
        if api_key is None:
            api_key, source = os.environ.get("MRANK_API_KEY", ""), "$MRANK_API_KEY"
        if api_key and self._creds is None and not insecure:
            raise ValueError(
                f"mrank_client: refusing to send the API key ({source}) to {target} over a "
                "plaintext channel, where anyone on the path can read it: pass tls=True (system "
                "root CAs) or ca=CA.pem, or insecure=True to send it in clear anyway (e.g. a "
                "test cluster on loopback)")
        self._api_key = api_key
        self._options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                         ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                         ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                         ("grpc.keepalive_permit_without_calls", 1),
                         ("grpc.http2.max_pings_without_data", 0)]
        if server_name:
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self.target = target
        self.timeout = timeout

    def _call(self, timeout, traceparent):
        md = []
        if self._api_key:
            md.append(("authorization", "Bearer " + self._api_key))
        if traceparent:
            md.append(("traceparent", traceparent))
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": md}

    def _methods(self, ch):
        ser = pb.RerankRequest.SerializeToString
        self._rerank = ch.unary_unary(RERANK, request_serializer=ser,
                                      response_deserializer=pb.RerankResponse.FromString)
        self._stream = ch.unary_stream(RERANK_STREAM, request_serializer=ser,
                                       response_deserializer=pb.RerankResponse.FromString)
        self._info = ch.unary_unary(INFO, request_serializer=pb.InfoRequest.SerializeToString,
                                    response_deserializer=pb.InfoResponse.FromString)

    def rerank_stream(self, query, documents, *, timeout=None, traceparent=None, **fields):
        """An iterator (async iterator on AsyncClient) of a partial RerankResponse
        (final=False) after each stage, then the final one; it is also the grpc call, whose
        cancel() stops the stream early. fields: as rerank's."""
        return self._stream(_request(query, documents, **fields),
                            **self._call(timeout, traceparent))


class Client(_Base):
    """A blocking client; one channel, safe to share between threads."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._ch = (grpc.secure_channel(target, self._creds, self._options) if self._creds
                    else grpc.insecure_channel(target, self._options))
        self._methods(self._ch)

    def rerank(self, query, documents, *, timeout=None, traceparent=None, **fields):
        """Returns a RerankResponse. fields (keyword only; anything else is a TypeError):
        top_n, profile, tier, request_id, return_documents, truncate, overrides, chunking
        (see _request). timeout: seconds, default the client's."""
        return self._rerank(_request(query, documents, **fields),
                            **self._call(timeout, traceparent))

    def info(self, timeout=None):
        return self._info(pb.InfoRequest(), **self._call(timeout, None))

    def close(self):
        self._ch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """The same over grpc.aio: await client.rerank(...), async for r in
    client.rerank_stream(...); use inside a running event loop."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._ch = (grpc.aio.secure_channel(target, self._creds, self._options) if self._creds
                    else grpc.aio.insecure_channel(target, self._options))
        self._methods(self._ch)

    async def rerank(self, query, documents, *, timeout=None, traceparent=None, **fields):
        return await self._rerank(_request(query, documents, **fields),
                                  **self._call(timeout, traceparent))

    async def info(self, timeout=None):
        return await self._info(pb.InfoRequest(), **self._call(timeout, None))

    async def close(self):
        await self._ch.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
