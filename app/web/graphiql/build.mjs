// Bundles GraphiQL and its dependencies (pinned by package-lock.json) into dist/graphiql.js and
// dist/graphiql.css, which the development server serves under /graphiql/assets/. Nothing is
// loaded from a CDN: the page works on a network without internet.
import { build } from "esbuild";
import { readFileSync } from "node:fs";

const result = await build({
  entryPoints: { graphiql: "src/main.jsx" },
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "iife",
  target: ["es2020"],
  outdir: "dist",
  loader: { ".woff": "dataurl", ".woff2": "dataurl", ".ttf": "dataurl", ".svg": "dataurl" },
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});

// The page's Content-Security-Policy names no other host; fail the build if the bundle would.
const css = readFileSync("dist/graphiql.css", "utf8");
const remote = css.match(/@import\s+url\(\s*["']?https?:[^)]*\)|url\(\s*["']?https?:\/\/[^)]*\)/g);
if (remote) {
  console.error(`dist/graphiql.css refers to remote URLs: ${remote.join(", ")}`);
  process.exit(1);
}
const sizes = Object.entries(result.metafile.outputs).map(([file, o]) => `${file} ${(o.bytes / 1024).toFixed(0)} KiB`);
console.log(`GraphiQL bundle: ${sizes.join(", ")}`);
