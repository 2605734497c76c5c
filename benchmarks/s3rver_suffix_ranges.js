// Preloaded into s3rver by benchmarks/bench_s3.py (node -r this-file s3rver ...).
// s3rver 3.7.1 reads "Range: bytes=-N" (the last N bytes: RFC 9110, and what S3 answers) as
// bytes 0 to N. Readers of a Zarr shard ask for its index that way, so this turns a suffix range
// into the explicit range of the object's last N bytes before s3rver's own handler runs.
const objects = require(process.env.S3RVER_PACKAGE + "/lib/controllers/object");
const getObject = objects.getObject;

objects.getObject = async function (ctx) {
  const suffix = /^bytes=-(\d+)$/.exec(ctx.headers.range || "");
  if (suffix) {
    try {
      const metadata = await ctx.store.getMetadata(ctx.params.bucket, ctx.params.key);
      const size = Number(metadata["content-length"]);
      ctx.headers.range = `bytes=${Math.max(0, size - Number(suffix[1]))}-${size - 1}`;
    } catch (err) {
      // a missing object: s3rver's handler answers NoSuchKey
    }
  }
  return getObject(ctx);
};
