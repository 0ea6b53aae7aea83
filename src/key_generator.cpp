#include "apikeys/key_generator.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "apikeys/error.hpp"
#include "crc32.hpp"

namespace apikeys {

namespace {
constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool is_base62(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// 1 for the 62 base62 characters: the format check runs twice per validate(), so it is
// one table load per character, and no early exit (its time does not depend on where
// a malformed key goes wrong).
constexpr std::array<std::uint8_t, 256> make_base62_table() noexcept {
  std::array<std::uint8_t, 256> t{};
  for (std::size_t c = 0; c < 256; ++c) {
    t[c] = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ? 1 : 0;
  }
  return t;
}
constexpr std::array<std::uint8_t, 256> kIsBase62 = make_base62_table();

bool valid_prefix(std::string_view p) noexcept {
  if (p.empty() || p.size() > 32) return false;
  for (char c : p) {
    if (!is_base62(c) && c != '_') return false;
  }
  return true;
}

#if defined(__SSE2__)
// 16 characters at once: bytes in '0'..'9' or, with bit 5 set (ASCII upper to lower
// case; no other byte lands in 'a'..'z' that way), in 'a'..'z'. Signed compares, so
// bytes >= 0x80 (negative) are rejected too. Returns a 16-bit mask, all ones if valid.
int base62_mask16(const char* p) noexcept {
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(c, _mm_set1_epi8('0' - 1)),
                                      _mm_cmplt_epi8(c, _mm_set1_epi8('9' + 1)));
  const __m128i lower = _mm_or_si128(c, _mm_set1_epi8(0x20));
  const __m128i alpha = _mm_and_si128(_mm_cmpgt_epi8(lower, _mm_set1_epi8('a' - 1)),
                                      _mm_cmplt_epi8(lower, _mm_set1_epi8('z' + 1)));
  return _mm_movemask_epi8(_mm_or_si128(digit, alpha));
}
#endif

// Shape only: `prefix` and exactly `length` base62 characters.
bool matches(std::string_view key, std::string_view prefix, std::size_t length) noexcept {
  if (key.size() != prefix.size() + length) return false;
  if (key.compare(0, prefix.size(), prefix) != 0) return false;
  unsigned ok = 1;
  std::size_t i = prefix.size();
#if defined(__SSE2__)
  // Two checks per validate(): whole blocks of 16 first (the default 32 characters are
  // two blocks), the rest by table.
  for (; i + 16 <= key.size(); i += 16)
    ok &= static_cast<unsigned>(base62_mask16(key.data() + i) == 0xFFFF);
#endif
  for (; i < key.size(); ++i) ok &= kIsBase62[static_cast<unsigned char>(key[i])];
  return ok != 0;
}
// `prefix`, `length` base62 characters, and with `checksum` the CRC-32 of all that as
// 6 more base62 characters.
bool matches(std::string_view key, std::string_view prefix, std::size_t length,
             bool checksum) noexcept {
  if (!checksum) return matches(key, prefix, length);
  constexpr std::size_t kSum = KeyFormat::kChecksumLength;
  if (key.size() != prefix.size() + length + kSum) return false;
  if (!matches(key, prefix, length + kSum)) return false;
  const std::uint32_t crc = detail::crc32(0, key.substr(0, key.size() - kSum));
  return detail::decode_checksum(key.data() + key.size() - kSum) == crc;
}

bool valid_brand(std::string_view brand) noexcept {
  if (brand.size() < KeyFormat::kMinBrand || brand.size() > KeyFormat::kMaxBrand) return false;
  for (char c : brand) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}
}  // namespace

KeyFormat KeyFormat::branded(std::string_view brand) {
  if (!valid_brand(brand)) {
    throw Error(ErrorCode::invalid_argument, "a key brand must be 2 to 16 characters of [a-z0-9]");
  }
  KeyFormat f;
  f.public_prefix = std::string(brand) + "_pk_";
  f.secret_prefix = std::string(brand) + "_sk_";
  f.length = 32;
  f.checksum = true;
  return f;
}

void append_key_checksum(std::string& key) {
  char sum[KeyFormat::kChecksumLength];
  detail::encode_checksum(detail::crc32(0, key), sum);
  key.append(sum, sizeof sum);
}

void KeyFormat::check() const {
  if (!valid_prefix(public_prefix) || !valid_prefix(secret_prefix)) {
    throw Error(ErrorCode::invalid_argument,
                "key prefixes must be 1 to 32 characters of [A-Za-z0-9_]");
  }
  if (public_prefix == secret_prefix) {
    throw Error(ErrorCode::invalid_argument, "public and secret key prefixes must differ");
  }
  if (length < 22 || length > 128) {
    throw Error(ErrorCode::invalid_argument,
                "key length must be 22 (128 bits) to 128 base62 characters");
  }
}

bool KeyFormat::is_public_key(std::string_view key) const noexcept {
  return matches(key, public_prefix, length, checksum);
}

bool KeyFormat::is_secret_key(std::string_view key) const noexcept {
  return matches(key, secret_prefix, length, checksum);
}

void append_random_base62(std::string& out, std::size_t count) {
  // Rejection sampling: only bytes below 248 (= 4 * 62) are used, so each of the 62
  // symbols is hit by exactly 4 byte values and none is favoured (no modulo bias).
  std::array<unsigned char, 64> buf{};
  std::size_t used = buf.size();
  out.reserve(out.size() + count);
  while (count > 0) {
    if (used == buf.size()) {
      if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) {
        OPENSSL_cleanse(buf.data(), buf.size());
        throw Error(ErrorCode::crypto, "the CSPRNG failed to produce key material");
      }
      used = 0;
    }
    const unsigned char b = buf[used++];
    if (b < 248) {
      out.push_back(kBase62[b % 62]);
      --count;
    }
  }
  OPENSSL_cleanse(buf.data(), buf.size());
}

KeyGenerator::~KeyGenerator() = default;
CsprngKeyGenerator::~CsprngKeyGenerator() = default;

KeyPair CsprngKeyGenerator::generate(const KeyFormat& format) {
  KeyPair pair;
  const std::size_t sum = format.checksum ? KeyFormat::kChecksumLength : 0;
  pair.public_key.reserve(format.public_prefix.size() + format.length + sum);
  pair.public_key = format.public_prefix;
  append_random_base62(pair.public_key, format.length);
  if (format.checksum) append_key_checksum(pair.public_key);

  std::string secret;
  secret.reserve(format.secret_prefix.size() + format.length + sum);  // never reallocates
  secret = format.secret_prefix;
  try {
    append_random_base62(secret, format.length);
    if (format.checksum) append_key_checksum(secret);
  } catch (...) {
    OPENSSL_cleanse(secret.data(), secret.size());
    throw;
  }
  pair.secret_key = SecretString(secret);
  OPENSSL_cleanse(secret.data(), secret.size());
  return pair;
}

}  // namespace apikeys
