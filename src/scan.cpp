// find_keys: one pass over the text that stops only at '_' bytes. Every key, branded or
// legacy, has "pk_" or "sk_" in it, and the random part after it has no '_', so each key
// is found from the '_' that ends its "pk_"/"sk_": look back for the prefix (and the
// brand), forward for the base62 characters, then check the checksum. SSE2 (or memchr()
// elsewhere) finds the "k_" pairs, so the many other '_' in code cost next to nothing.

#include "apikeys/scan.hpp"

#include <array>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#endif

#include "apikeys/key_generator.hpp"
#include "crc32.hpp"

namespace apikeys {

namespace {

constexpr std::size_t kRandom = 32;  // Base62 characters of the random part.
constexpr std::size_t kSum = KeyFormat::kChecksumLength;
constexpr std::size_t kShownChars = 4;  // Characters of a secret shown after its prefix.

enum CharClass : std::uint8_t {
  kBase62 = 1,  // [0-9A-Za-z]
  kBrand = 2,   // [0-9a-z]
  kWord = 4,    // [0-9A-Za-z_]: a key must not be glued to one of these before it.
};

constexpr std::array<std::uint8_t, 256> make_classes() noexcept {
  std::array<std::uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    std::uint8_t v = 0;
    const bool digit = c >= '0' && c <= '9';
    const bool lower = c >= 'a' && c <= 'z';
    const bool upper = c >= 'A' && c <= 'Z';
    if (digit || lower || upper) v |= kBase62 | kWord;
    if (digit || lower) v |= kBrand;
    if (c == '_') v |= kWord;
    t[static_cast<std::size_t>(c)] = v;
  }
  return t;
}

constexpr std::array<std::uint8_t, 256> kClass = make_classes();

inline bool is(const char* p, std::size_t i, CharClass c) noexcept {
  return (kClass[static_cast<unsigned char>(p[i])] & c) != 0;
}

// True when p[from, from + n) are all base62. Branch-free inside, so the common case
// (a whole random part) costs no mispredictions.
inline bool all_base62(const char* p, std::size_t from, std::size_t n) noexcept {
  unsigned ok = kBase62;
  for (std::size_t i = 0; i < n; ++i) ok &= kClass[static_cast<unsigned char>(p[from + i])];
  return ok != 0;
}

// The first u in [from, limit) with "k_" at p[u - 1, u + 1), or `limit`.
// REQUIRES: from >= 1.
inline std::size_t next_k_underscore(const char* p, std::size_t from, std::size_t limit) noexcept {
  std::size_t i = from;
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
  // 16 positions per step: a '_' whose byte before is 'k' (most '_' in code are not).
  const __m128i underscore = _mm_set1_epi8('_');
  const __m128i k = _mm_set1_epi8('k');
  for (; i + 16 <= limit; i += 16) {
    const __m128i here = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i before = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i - 1));
    const int mask = _mm_movemask_epi8(
        _mm_and_si128(_mm_cmpeq_epi8(here, underscore), _mm_cmpeq_epi8(before, k)));
    if (mask != 0) return i + static_cast<std::size_t>(__builtin_ctz(static_cast<unsigned>(mask)));
  }
#endif
  while (i < limit) {
    const void* hit = std::memchr(p + i, '_', limit - i);
    if (hit == nullptr) return limit;
    const auto u = static_cast<std::size_t>(static_cast<const char*>(hit) - p);
    if (p[u - 1] == 'k') return u;
    i = u + 1;
  }
  return limit;
}

// What may be shown of the key text[start, end), whose "pk_"/"sk_" ends at `underscore`.
std::string shown_of(std::string_view text, std::size_t start, std::size_t underscore,
                     std::size_t end, bool secret) {
  if (!secret) return std::string(text.substr(start, end - start));
  std::string s;
  const std::size_t head = underscore + 1 - start + kShownChars;
  s.reserve(head + 3);
  s.append(text.data() + start, head);
  s.append("...");
  return s;
}

}  // namespace

std::vector<FoundKey> find_keys(std::string_view text) {
  std::vector<FoundKey> found;
  const char* const p = text.data();
  const std::size_t n = text.size();
  // Shortest key: "pk_" and 32 characters; the first '_' that can end "pk_" is at 2, and
  // the last is 33 bytes before the end.
  std::size_t from = 2;
  while (from + kRandom < n) {
    const std::size_t u = next_k_underscore(p, from, n - kRandom);
    if (u == n - kRandom) break;
    from = u + 1;
    // "pk_" or "sk_", then 32 base62 characters.
    if (p[u - 2] != 'p' && p[u - 2] != 's') continue;
    if (!all_base62(p, u + 1, kRandom)) continue;
    const bool secret = p[u - 2] == 's';

    std::size_t start;
    std::size_t end;
    bool legacy;
    if (u >= 3 && p[u - 3] == '_') {
      // Branded: a brand of 2 to 16 [a-z0-9] that stands alone, "_pk_"/"_sk_", 32 + 6
      // base62, nothing base62 after, and a checksum that matches.
      const std::size_t brand_end = u - 3;
      std::size_t b = brand_end;
      while (b > 0 && brand_end - b <= KeyFormat::kMaxBrand && is(p, b - 1, kBrand)) --b;
      const std::size_t brand_len = brand_end - b;
      if (brand_len < KeyFormat::kMinBrand || brand_len > KeyFormat::kMaxBrand) continue;
      if (b > 0 && is(p, b - 1, kWord)) continue;
      end = u + 1 + kRandom + kSum;
      if (end > n || !all_base62(p, u + 1 + kRandom, kSum)) continue;
      if (end < n && is(p, end, kBase62)) continue;
      const std::uint32_t crc = detail::crc32(0, text.substr(b, end - kSum - b));
      if (detail::decode_checksum(p + end - kSum) != crc) continue;
      start = b;
      legacy = false;
    } else {
      // Legacy: "pk_"/"sk_" that stands alone, exactly 32 base62.
      if (u >= 3 && is(p, u - 3, kWord)) continue;
      end = u + 1 + kRandom;
      if (end < n && is(p, end, kBase62)) continue;
      start = u - 2;
      legacy = true;
    }

    FoundKey k;
    k.offset = start;
    k.length = end - start;
    k.secret = secret;
    k.legacy = legacy;
    if (!legacy) k.brand.assign(p + start, u - 3 - start);
    k.shown = shown_of(text, start, u, end, secret);
    found.push_back(std::move(k));
    // Keys are made of [0-9A-Za-z_] and must not be glued to a word byte before them,
    // so the next one starts after this one ends: no key overlaps another, and offsets
    // come in order.
    from = end + 1;
  }
  return found;
}

}  // namespace apikeys
