#include "apikeys/key_generator.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <utility>

#include "apikeys/error.hpp"
#include "crc32.hpp"
#include "key_format.hpp"
#include "wipe.hpp"

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
  if (p.empty() || p.size() > KeyFormat::kMaxPrefix) return false;
  for (char c : p) {
    if (!is_base62(c) && c != '_') return false;
  }
  return true;
}

// 1 when p[0..n) are all base62, else 0; no early exit.
unsigned base62_run(const char* p, std::size_t n) noexcept {
  unsigned ok = 1;
  std::size_t i = 0;
#if defined(__SSE2__)
  // Whole blocks of 16 first (the default 32 characters are two blocks), the rest by
  // table.
  for (; i + 16 <= n; i += 16) ok &= static_cast<unsigned>(detail::base62_mask16(p + i) == 0xFFFF);
#endif
  for (; i < n; ++i) ok &= kIsBase62[static_cast<unsigned char>(p[i])];
  return ok;
}

// Shape only: `prefix` and exactly `length` base62 characters.
bool matches(std::string_view key, std::string_view prefix, std::size_t length) noexcept {
  if (key.size() != prefix.size() + length) return false;
  if (key.compare(0, prefix.size(), prefix) != 0) return false;
  return base62_run(key.data() + prefix.size(), length) != 0;
}

constexpr std::size_t kSum = KeyFormat::kChecksumLength;

// True when `key` is `prefix`, then `length` characters, then kSum more: the size and
// prefix of a checksummed key.
bool checksummed_shape(std::string_view key, std::string_view prefix, std::size_t length) noexcept {
  return key.size() == prefix.size() + length + kSum && key.compare(0, prefix.size(), prefix) == 0;
}

// `prefix`, `length` base62 characters, and with `checksum` the CRC-32 of all that as
// kSum more base62 characters.
bool matches(std::string_view key, std::string_view prefix, std::size_t length,
             bool checksum) noexcept {
  if (!checksum) return matches(key, prefix, length);
  if (!checksummed_shape(key, prefix, length)) return false;
  return detail::checksummed_body_ok(key.data() + prefix.size(), length, detail::crc32(0, prefix));
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
  // The key may be a secret: growing it must not free a copy (reserve_wiped()).
  detail::reserve_wiped(key, KeyFormat::kChecksumLength);
  char sum[KeyFormat::kChecksumLength];
  detail::encode_checksum(detail::crc32(0, key), sum);
  key.append(sum, sizeof sum);
  OPENSSL_cleanse(sum, sizeof sum);
}

void KeyFormat::check() const {
  if (!valid_prefix(public_prefix) || !valid_prefix(secret_prefix)) {
    throw Error(ErrorCode::invalid_argument,
                "key prefixes must be 1 to 32 characters of [A-Za-z0-9_]");
  }
  if (public_prefix == secret_prefix) {
    throw Error(ErrorCode::invalid_argument, "public and secret key prefixes must differ");
  }
  if (length < kMinLength || length > kMaxLength) {
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
  // `out` may be a secret being built: growing it must not free a copy.
  detail::reserve_wiped(out, count);
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

namespace detail {

FormatCheck::FormatCheck(KeyFormat format)
    : format_(std::move(format)),
      public_size_(format_.public_key_size()),
      public_crc_(crc32(0, format_.public_prefix)),
      secret_crc_(crc32(0, format_.secret_prefix)) {
  for (auto [prefix, head] : {std::make_pair(&format_.public_prefix, &public_head_),
                              std::make_pair(&format_.secret_prefix, &secret_head_)}) {
    // A key is at least 1 + 22 characters, so 16 can always be read once its size is right.
    head->usable = prefix->size() <= head->bytes.size();
    if (!head->usable) continue;
    for (std::size_t i = 0; i < prefix->size(); ++i) head->bytes[i] = (*prefix)[i];
    head->mask = static_cast<int>((0xFFFFU << prefix->size()) & 0xFFFFU);
  }
}

bool FormatCheck::shape(std::string_view key, std::string_view prefix, std::size_t size,
                        const Head& head) const noexcept {
  if (key.size() != size) return false;
#if defined(__SSE2__)
  if (head.usable) {
    const __m128i k = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key.data()));
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(head.bytes.data()));
    return (_mm_movemask_epi8(_mm_cmpeq_epi8(k, h)) | head.mask) == 0xFFFF;
  }
#endif
  return key.compare(0, prefix.size(), prefix) == 0;
}

bool FormatCheck::check_pair(std::string_view pk, std::string_view sk, bool& pk_ok) const noexcept {
  const KeyFormat& f = format_;
  const std::size_t sum = f.checksum ? kSum : 0;
  const std::size_t pk_size = f.public_prefix.size() + f.length + sum;
  const std::size_t sk_size = f.secret_prefix.size() + f.length + sum;
  // Each key read in full once its prefix and size are right; the secret only when the
  // public key is good (so which of the two is wrong shows, as it always has). A body
  // pointer is formed only once its key's size is right: a default string_view's data()
  // is null, and null plus an offset is undefined.
  auto body = [](std::string_view key, std::size_t prefix) { return key.data() + prefix; };
  if (!f.checksum) {
    pk_ok = shape(pk, f.public_prefix, pk_size, public_head_) &&
            base62_run(body(pk, f.public_prefix.size()), f.length) != 0;
    return pk_ok && shape(sk, f.secret_prefix, sk_size, secret_head_) &&
           base62_run(body(sk, f.secret_prefix.size()), f.length) != 0;
  }
  pk_ok = shape(pk, f.public_prefix, pk_size, public_head_) &&
          checksummed_body_ok(body(pk, f.public_prefix.size()), f.length, public_crc_);
  return pk_ok && shape(sk, f.secret_prefix, sk_size, secret_head_) &&
         checksummed_body_ok(body(sk, f.secret_prefix.size()), f.length, secret_crc_);
}

}  // namespace detail

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
  const detail::WipeOnExit wiped(secret);  // however this ends: a throw, bad_alloc included
  secret.reserve(format.secret_prefix.size() + format.length + sum);  // never reallocates
  secret = format.secret_prefix;
  append_random_base62(secret, format.length);
  if (format.checksum) append_key_checksum(secret);
  pair.secret_key = SecretString(secret);
  return pair;
}

}  // namespace apikeys
