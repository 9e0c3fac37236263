// Uploads a file to Lintel with the real tus-js-client, in chunks, interrupted after
// the first chunk and resumed from the server's offset by a second Upload that knows
// only the upload URL. Prints {"url", "chunks", "resumedAt"} as JSON.
//
//   node tus.mjs <endpoint> <bearer token> <file> <chunk size>
import fs from "node:fs";
import * as tus from "tus-js-client";

const [endpoint, token, file, chunk] = process.argv.slice(2);
const data = fs.readFileSync(file);
const chunkSize = Number(chunk);
let chunks = 0;

function run(options) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      chunkSize,
      retryDelays: [],
      headers: { Authorization: `Bearer ${token}` },
      metadata: { filename: "movie clip.bin", filetype: "application/octet-stream" },
      onChunkComplete: () => {
        chunks += 1;
        if (options.stopAfterFirst && chunks === 1) {
          upload.abort(false).then(() => resolve({ upload, aborted: true }), reject);
        }
      },
      onSuccess: () => resolve({ upload, aborted: false }),
      onError: reject,
      ...options.tus,
    });
    upload.start();
  });
}

const first = await run({ stopAfterFirst: true });
if (!first.aborted || !first.upload.url) {
  throw new Error("the first upload was not interrupted after one chunk");
}
const url = first.upload.url;
const resumedAt = chunks;
const second = await run({ tus: { uploadUrl: url } });
if (second.upload.url !== url) {
  throw new Error(`resumed into another upload: ${second.upload.url} != ${url}`);
}
console.log(JSON.stringify({ url, chunks, resumedAt }));
