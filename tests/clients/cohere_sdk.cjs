// cohere_sdk.cjs: the npm `cohere-ai` SDK, unchanged, pointed at mrank's HTTP front end: its
// v2 (CohereClientV2) and v1 (CohereClient) rerank calls must succeed and return results in
// the SDK's own types. Used by tests/http_cohere_sdk.sh.
//   node cohere_sdk.cjs NODE_MODULES_DIR BASE_URL API_KEY
// Prints one JSON line per call; exits 1 on any failure.
const [modules, baseUrl, key] = process.argv.slice(2);
const { CohereClient, CohereClientV2 } = require(require.resolve("cohere-ai", { paths: [modules] }));

const docs = [
  "Paris is the capital and largest city of France.",
  "Berlin is the capital of Germany.",
  "The Seine flows through Paris.",
  "Bananas are rich in potassium.",
  "France is a country in western Europe; its capital is Paris.",
];

function check(name, res, n) {
  if (!res || !Array.isArray(res.results) || res.results.length !== n)
    throw new Error(`${name}: expected ${n} results, got ${JSON.stringify(res)}`);
  const seen = new Set();
  let prev = Infinity;
  for (const r of res.results) {
    if (!Number.isInteger(r.index) || r.index < 0 || r.index >= docs.length || seen.has(r.index))
      throw new Error(`${name}: bad index ${r.index}`);
    seen.add(r.index);
    if (typeof r.relevanceScore !== "number" || r.relevanceScore < 0 || r.relevanceScore > 1)
      throw new Error(`${name}: bad relevanceScore ${r.relevanceScore}`);
    if (r.relevanceScore > prev) throw new Error(`${name}: relevanceScore increases down the results`);
    prev = r.relevanceScore;
  }
  console.log(JSON.stringify({ call: name, id: res.id, results: res.results }));
}

(async () => {
  const v2 = new CohereClientV2({ token: key, baseUrl, maxRetries: 0 });
  const r2 = await v2.rerank({ model: "mrank", query: "What is the capital of France?",
                               documents: docs, topN: 3 });
  check("v2.rerank", r2, 3);
  const v1 = new CohereClient({ token: key, baseUrl, maxRetries: 0 });
  const r1 = await v1.rerank({ model: "mrank", query: "What is the capital of France?",
                               documents: docs, returnDocuments: true });
  check("v1.rerank", r1, docs.length);
  for (const r of r1.results)
    if (!r.document || r.document.text !== docs[r.index])
      throw new Error(`v1.rerank: document of ${r.index} is ${JSON.stringify(r.document)}`);
})().catch((e) => {
  console.error(`cohere-ai SDK call failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
