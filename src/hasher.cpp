// HMAC-SHA256 (RFC 2104) with the keyed inner and outer SHA-256 states computed once
// per pepper. A digest then costs copying two 112-byte states and two compressions,
// with no allocation and no algorithm fetch: OpenSSL 3's one-shot HMAC() and
// EVP_MAC both fetch or duplicate provider contexts per call, several times slower.
// The low-level SHA256_* functions are deprecated in OpenSSL 3.0 but present in every
// 3.x release; builds without them (OPENSSL_NO_DEPRECATED_3_0) fall back to EVP_Q_mac.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "apikeys/hasher.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslconf.h>
#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "apikeys/error.hpp"

namespace apikeys {

Hasher::~Hasher() = default;

bool Hasher::verify(std::string_view secret, const Digest& stored) const noexcept {
  try {
    const auto d = hash_with(secret, stored.pepper_id);
    return d.has_value() && constant_time_equal(*d, stored);
  } catch (...) {
    return false;
  }
}

namespace {

constexpr std::size_t kBlock = 64;
constexpr std::size_t kMinPepper = 32;
constexpr std::size_t kMaxLegacyPepper = 4096;
constexpr std::size_t kMinDistinctBytes = 8;

// The smallest p > 0 with bytes[i] == bytes[i + p] for every i < size - p (size itself
// when there is none), from the prefix function (Knuth-Morris-Pratt): linear time for
// any input. The table is derived from the pepper, so it is wiped.
std::size_t smallest_period(std::string_view bytes) {
  const std::size_t n = bytes.size();
  if (n == 0) return 0;
  std::vector<std::size_t> border(n, 0);
  for (std::size_t i = 1; i < n; ++i) {
    std::size_t k = border[i - 1];
    while (k > 0 && bytes[i] != bytes[k]) k = border[k - 1];
    if (bytes[i] == bytes[k]) ++k;
    border[i] = k;
  }
  const std::size_t period = n - border[n - 1];
  OPENSSL_cleanse(border.data(), border.size() * sizeof(std::size_t));
  return period;
}

// The rule for a pepper that makes new digests (documented on Pepper): nullptr when the
// bytes pass, else the rule they break. Only counts and a period are computed; nothing
// of the bytes themselves reaches the message.
const char* entropy_flaw(std::string_view bytes) {
  std::array<std::size_t, 256> count{};
  for (const char c : bytes) ++count[static_cast<unsigned char>(c)];
  std::size_t distinct = 0;
  std::size_t most = 0;
  for (const std::size_t c : count) {
    distinct += c != 0 ? 1 : 0;
    most = std::max(most, c);
  }
  OPENSSL_cleanse(count.data(), sizeof count);
  if (distinct < kMinDistinctBytes) return "has fewer than 8 distinct byte values";
  if (most >= bytes.size() - most) return "has one byte value in half or more of its bytes";
  if (smallest_period(bytes) <= bytes.size() / 2) return "is a shorter byte sequence repeated";
  return nullptr;
}

#if !defined(OPENSSL_NO_DEPRECATED_3_0)
struct KeyedState {
  std::uint32_t id = 0;
  SHA256_CTX inner{};
  SHA256_CTX outer{};

  KeyedState() = default;
  KeyedState(const KeyedState&) = default;
  KeyedState& operator=(const KeyedState&) = default;
  ~KeyedState() {
    OPENSSL_cleanse(&inner, sizeof inner);
    OPENSSL_cleanse(&outer, sizeof outer);
  }

  bool init(std::uint32_t pepper_id, std::string_view key) {
    id = pepper_id;
    unsigned char k[kBlock] = {};
    if (key.size() > kBlock) {
      SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), k);
    } else {
      std::memcpy(k, key.data(), key.size());
    }
    unsigned char pad[kBlock];
    bool ok = true;
    for (std::size_t i = 0; i < kBlock; ++i) pad[i] = static_cast<unsigned char>(k[i] ^ 0x36);
    ok = ok && SHA256_Init(&inner) == 1 && SHA256_Update(&inner, pad, kBlock) == 1;
    for (std::size_t i = 0; i < kBlock; ++i) pad[i] = static_cast<unsigned char>(k[i] ^ 0x5c);
    ok = ok && SHA256_Init(&outer) == 1 && SHA256_Update(&outer, pad, kBlock) == 1;
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(pad, sizeof pad);
    return ok;
  }

  bool mac(std::string_view message, std::uint8_t* out) const noexcept {
    // The copies hold key-derived state and, in the inner one, message bytes: wipe both.
    SHA256_CTX ctx = inner;
    unsigned char ih[SHA256_DIGEST_LENGTH];
    bool ok =
        SHA256_Update(&ctx, message.data(), message.size()) == 1 && SHA256_Final(ih, &ctx) == 1;
    ctx = outer;
    ok = ok && SHA256_Update(&ctx, ih, sizeof ih) == 1 && SHA256_Final(out, &ctx) == 1;
    OPENSSL_cleanse(&ctx, sizeof ctx);
    OPENSSL_cleanse(ih, sizeof ih);
    return ok;
  }
};
#else
struct KeyedState {
  std::uint32_t id = 0;
  std::string key;

  ~KeyedState() { OPENSSL_cleanse(key.data(), key.size()); }
  bool init(std::uint32_t pepper_id, std::string_view k) {
    id = pepper_id;
    key.assign(k);
    return true;
  }
  bool mac(std::string_view message, std::uint8_t* out) const noexcept {
    size_t len = 0;
    return EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                     reinterpret_cast<const unsigned char*>(message.data()), message.size(), out,
                     32, &len) != nullptr &&
           len == 32;
  }
};
#endif

}  // namespace

struct HmacSha256Hasher::Impl {
  // Few peppers (one current, a handful being retired): a linear scan beats a map.
  std::vector<KeyedState> states;
  const KeyedState* current = nullptr;
  bool legacy_short = false;

  [[nodiscard]] const KeyedState* find(std::uint32_t id) const noexcept {
    for (const auto& s : states) {
      if (s.id == id) return &s;
    }
    return nullptr;
  }
};

HmacSha256Hasher::HmacSha256Hasher(const std::vector<Pepper>& peppers, std::uint32_t current_id)
    : impl_(std::make_unique<Impl>()) {
  if (peppers.empty()) {
    throw Error(ErrorCode::invalid_argument, "at least one pepper is required");
  }
  impl_->states.reserve(peppers.size() + 1);  // + 1: a legacy pepper never reallocates
  for (const auto& p : peppers) {
    if (p.bytes.size() < kMinPepper) {
      throw Error(ErrorCode::invalid_argument, "pepper " + std::to_string(p.id) + " is " +
                                                   std::to_string(p.bytes.size()) +
                                                   " bytes; at least 32 bytes are required");
    }
    if (p.id == current_id) {
      if (const char* flaw = entropy_flaw(p.bytes)) {
        throw Error(ErrorCode::invalid_argument,
                    "pepper " + std::to_string(p.id) + " " + flaw +
                        ", so it cannot be random; use 32 random bytes (e.g. hex-decoded "
                        "`openssl rand -hex 32`)");
      }
    }
    if (impl_->find(p.id) != nullptr) {
      throw Error(ErrorCode::invalid_argument,
                  "pepper id " + std::to_string(p.id) + " is used twice");
    }
    impl_->states.emplace_back();
    if (!impl_->states.back().init(p.id, p.bytes)) {
      throw Error(ErrorCode::crypto, "SHA-256 initialisation failed");
    }
  }
  impl_->current = impl_->find(current_id);
  if (impl_->current == nullptr) {
    throw Error(ErrorCode::invalid_argument,
                "current pepper id " + std::to_string(current_id) + " is not among the peppers");
  }
}

HmacSha256Hasher::HmacSha256Hasher(const std::vector<Pepper>& peppers, std::uint32_t current_id,
                                   std::string_view legacy_pepper)
    : HmacSha256Hasher(peppers, current_id) {
  if (legacy_pepper.empty() || legacy_pepper.size() > kMaxLegacyPepper) {
    throw Error(ErrorCode::invalid_argument, "the legacy pepper must be 1 to 4096 bytes");
  }
  if (impl_->find(kLegacyPepperId) != nullptr) {
    throw Error(ErrorCode::invalid_argument,
                "pepper id " + std::to_string(kLegacyPepperId) +
                    " is the legacy pepper's; give the others another id");
  }
  const KeyedState* current_before = impl_->current;
  impl_->states.emplace_back();  // capacity reserved above: `current` stays valid
  if (!impl_->states.back().init(kLegacyPepperId, legacy_pepper)) {
    throw Error(ErrorCode::crypto, "SHA-256 initialisation failed");
  }
  impl_->current = current_before;
  impl_->legacy_short = legacy_pepper.size() < kMinPepper;
}

HmacSha256Hasher::HmacSha256Hasher(std::string_view pepper)
    : HmacSha256Hasher(std::vector<Pepper>{Pepper{1, pepper}}, 1) {}

HmacSha256Hasher::~HmacSha256Hasher() = default;

std::uint32_t HmacSha256Hasher::current_pepper_id() const noexcept { return impl_->current->id; }

Digest HmacSha256Hasher::hash(std::string_view secret) const {
  Digest d;
  d.pepper_id = impl_->current->id;
  if (!impl_->current->mac(secret, d.bytes.data())) {
    throw Error(ErrorCode::crypto, "HMAC-SHA256 failed");
  }
  return d;
}

std::optional<Digest> HmacSha256Hasher::hash_with(std::string_view secret,
                                                  std::uint32_t pepper_id) const {
  const KeyedState* s = impl_->find(pepper_id);
  if (s == nullptr) return std::nullopt;
  Digest d;
  d.pepper_id = pepper_id;
  if (!s->mac(secret, d.bytes.data())) throw Error(ErrorCode::crypto, "HMAC-SHA256 failed");
  return d;
}

bool HmacSha256Hasher::verify(std::string_view secret, const Digest& stored) const noexcept {
  const KeyedState* s = impl_->find(stored.pepper_id);
  if (s == nullptr) return false;
  Digest d;
  d.pepper_id = stored.pepper_id;
  if (!s->mac(secret, d.bytes.data())) return false;
  return constant_time_equal(d, stored);
}

std::vector<std::uint32_t> HmacSha256Hasher::pepper_ids() const {
  std::vector<std::uint32_t> ids;
  ids.reserve(impl_->states.size());
  ids.push_back(impl_->current->id);
  for (const auto& st : impl_->states) {
    if (&st != impl_->current) ids.push_back(st.id);
  }
  return ids;
}

bool HmacSha256Hasher::legacy_pepper_is_short() const noexcept { return impl_->legacy_short; }

std::vector<std::uint32_t> Hasher::pepper_ids() const { return {current_pepper_id()}; }

}  // namespace apikeys
