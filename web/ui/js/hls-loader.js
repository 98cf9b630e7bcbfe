// Loads the vendored hls.js (web/ui/vendor, see web/README.md) the first time a player needs it:
// pages that play everything over MSE never download it.

let loading = null;

export function Hls() {
  if (!loading) {
    loading = import('../vendor/hls.light.min.mjs')
      .then((m) => m.default)
      .catch((e) => {
        loading = null;
        throw new Error(`cannot load hls.js: ${e.message}`);
      });
  }
  return loading;
}
