"""mrank_client: Python client of mrank's public gRPC API (mrank.v1.Ranker on the coordinator).

  from mrank_client import Client
  with Client("127.0.0.1:7000") as c:
      r = c.rerank("what is a fox", ["a fox is a mammal", "paris is in france"], top_n=1)
      print(r.results[0].index, r.results[0].relevance_score)

AsyncClient has the same methods as coroutines (grpc.aio). TLS: ca= (PEM file of the CA that
signed the server), cert=/key= (a client certificate, mTLS); api_key= (or $MRANK_API_KEY) is
sent as "authorization: Bearer KEY"; traceparent= continues a W3C trace. Errors are
grpc.RpcError (code() and details() name the problem; RESOURCE_EXHAUSTED carries
"retry-after-ms" in trailing metadata). Messages are mrank_client.pb (mrank_pb2, generated
from proto/mrank.proto when the package was built).
"""
import os

import grpc

from . import mrank_pb2 as pb

__all__ = ["Client", "AsyncClient", "pb"]

RERANK = "/mrank.v1.Ranker/Rerank"
RERANK_STREAM = "/mrank.v1.Ranker/RerankStream"
INFO = "/mrank.v1.Ranker/Info"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _credentials(ca, cert, key):
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError("cert and key go together (mTLS)")
    return grpc.ssl_channel_credentials(root_certificates=_read(ca) if ca else None,
                                        private_key=_read(key) if key else None,
                                        certificate_chain=_read(cert) if cert else None)


def _request(query, documents, top_n, profile, tier, request_id, chunking=None):
    req = pb.RerankRequest(query=query, top_n=top_n, profile=profile, tier=tier,
                           request_id=request_id)
    if chunking:   # {"window", "stride", "max_chunks"} (docs/cluster.md "Chunking")
        req.chunking.CopyFrom(pb.Chunking(**chunking))
    for d in documents:
        if isinstance(d, str):
            req.documents.add(text=d)
        else:
            req.documents.add(text=d["text"], id=d.get("id", ""))
    return req


class _Base:
    def __init__(self, target, ca=None, cert=None, key=None, api_key=None, server_name=None):
        self._creds = _credentials(ca, cert, key)
        self._api_key = api_key if api_key is not None else os.environ.get("MRANK_API_KEY", "")
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.target = target

    def _metadata(self, traceparent):
        md = []
        if self._api_key:
            md.append(("authorization", "Bearer " + self._api_key))
        if traceparent:
            md.append(("traceparent", traceparent))
        return md

    def _methods(self, ch):
        ser = pb.RerankRequest.SerializeToString
        self._rerank = ch.unary_unary(RERANK, request_serializer=ser,
                                      response_deserializer=pb.RerankResponse.FromString)
        self._stream = ch.unary_stream(RERANK_STREAM, request_serializer=ser,
                                       response_deserializer=pb.RerankResponse.FromString)
        self._info = ch.unary_unary(INFO, request_serializer=pb.InfoRequest.SerializeToString,
                                    response_deserializer=pb.InfoResponse.FromString)


class Client(_Base):
    """A blocking client; one channel, safe to share between threads."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._ch = (grpc.secure_channel(target, self._creds, self._options) if self._creds
                    else grpc.insecure_channel(target, self._options))
        self._methods(self._ch)

    def rerank(self, query, documents, top_n=0, profile="", tier="", request_id="",
               timeout=None, traceparent=None, chunking=None):
        """documents: strings or {"text", "id"} dicts; chunking: None (long documents cut at
        the token budget) or {"window", "stride", "max_chunks"}. Returns a RerankResponse."""
        return self._rerank(_request(query, documents, top_n, profile, tier, request_id,
                                     chunking),
                            timeout=timeout, metadata=self._metadata(traceparent))

    def rerank_stream(self, query, documents, timeout=None, traceparent=None, **kw):
        """Yields a partial RerankResponse (final=False) after each stage, then the final."""
        yield from self._stream(_request(query, documents, kw.get("top_n", 0),
                                         kw.get("profile", ""), kw.get("tier", ""),
                                         kw.get("request_id", ""), kw.get("chunking")),
                                timeout=timeout, metadata=self._metadata(traceparent))

    def info(self, timeout=None):
        return self._info(pb.InfoRequest(), timeout=timeout, metadata=self._metadata(None))

    def close(self):
        self._ch.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """The same over grpc.aio: await client.rerank(...); use inside a running event loop."""

    def __init__(self, target, **kw):
        super().__init__(target, **kw)
        self._ch = (grpc.aio.secure_channel(target, self._creds, self._options) if self._creds
                    else grpc.aio.insecure_channel(target, self._options))
        self._methods(self._ch)

    async def rerank(self, query, documents, top_n=0, profile="", tier="", request_id="",
                     timeout=None, traceparent=None, chunking=None):
        return await self._rerank(_request(query, documents, top_n, profile, tier, request_id,
                                           chunking),
                                  timeout=timeout, metadata=self._metadata(traceparent))

    async def info(self, timeout=None):
        return await self._info(pb.InfoRequest(), timeout=timeout, metadata=self._metadata(None))

    async def close(self):
        await self._ch.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
