// fuzz_scan: apikeys::find_keys over arbitrary text. Checks that every finding lies within
// the input, that findings are sorted and do not overlap, that each stands alone (no
// [A-Za-z0-9_] right before it, no letter or digit right after), that a branded finding
// is a key KeyFormat::branded(brand) accepts and a legacy one is "pk_"/"sk_" + 32 base62,
// and that `shown` is the public key whole, or a secret's prefix and 4 characters then
// "...". A random checksum almost never matches, so the text is scanned twice: as given,
// and with the 6 characters after every "_pk_"/"_sk_" + 32 base62 rewritten to the
// checksum of what precedes them (from the start of the [a-z0-9] run before), which
// makes branded keys of whatever brand, neighbours and tail the input has.
// Input: the text.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/key_generator.hpp"
#include "apikeys/scan.hpp"
#include "fuzz_support.hpp"

namespace {

bool ref_base62(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}
bool ref_brand_char(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'); }
bool ref_word(char c) { return ref_base62(c) || c == '_'; }

// Rewrites checksums as the header comment says.
std::string with_checksums(std::string_view in) {
  std::string s(in);
  for (std::size_t i = 0; i + 4 + 38 <= s.size(); ++i) {
    if (s[i] != '_' || (s[i + 1] != 'p' && s[i + 1] != 's') || s[i + 2] != 'k' || s[i + 3] != '_') {
      continue;
    }
    const std::size_t body = i + 4;
    bool ok = true;
    for (std::size_t j = body; j < body + 32; ++j) ok = ok && ref_base62(s[j]);
    if (!ok) continue;
    std::size_t b = i;
    while (b > 0 && i - b < 17 && ref_brand_char(s[b - 1])) --b;
    std::string key = s.substr(b, body + 32 - b);
    apikeys::append_key_checksum(key);
    s.replace(b, key.size(), key);
  }
  return s;
}

void check(std::string_view text) {
  const std::vector<apikeys::FoundKey> found = apikeys::find_keys(text);
  std::size_t next_free = 0;  // Where the previous finding ended.
  for (const apikeys::FoundKey& f : found) {
    FUZZ_CHECK(f.length > 0 && f.offset <= text.size() && f.length <= text.size() - f.offset);
    FUZZ_CHECK(f.offset >= next_free);
    next_free = f.offset + f.length;
    const std::string_view key = text.substr(f.offset, f.length);
    FUZZ_CHECK(f.offset == 0 || !ref_word(text[f.offset - 1]));
    FUZZ_CHECK(next_free == text.size() || !ref_base62(text[next_free]));

    std::size_t prefix = 0;
    if (f.legacy) {
      FUZZ_CHECK(f.brand.empty());
      FUZZ_CHECK(key.size() == 35);
      FUZZ_CHECK(key.substr(0, 3) == (f.secret ? "sk_" : "pk_"));
      for (char c : key.substr(3)) FUZZ_CHECK(ref_base62(c));
      prefix = 3;
    } else {
      FUZZ_CHECK(f.brand.size() >= apikeys::KeyFormat::kMinBrand &&
                 f.brand.size() <= apikeys::KeyFormat::kMaxBrand);
      const apikeys::KeyFormat fmt = apikeys::KeyFormat::branded(f.brand);
      FUZZ_CHECK(f.secret ? fmt.is_secret_key(key) : fmt.is_public_key(key));
      prefix = f.brand.size() + 4;
    }
    if (f.secret) {
      FUZZ_CHECK(f.shown.size() == prefix + 4 + 3 && f.shown.size() < key.size());
      FUZZ_CHECK(key.substr(0, prefix + 4) == std::string_view(f.shown).substr(0, prefix + 4));
      FUZZ_CHECK(f.shown.compare(prefix + 4, 3, "...") == 0);
    } else {
      FUZZ_CHECK(f.shown == key);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check(text);
  const std::string fixed = with_checksums(text);
  check(fixed);
  return 0;
}
