// Private: SipHash-1-3 with a per-instance random key, for hash tables whose keys an
// attacker chooses (public keys presented to validate). std::hash is unkeyed, so a
// flood of colliding keys could turn a table into a list; a secret key prevents that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace apikeys::detail {

class SipHasher {
 public:
  /// Draws the key from the CSPRNG; throws Error(crypto) if that fails.
  SipHasher();

  std::uint64_t operator()(std::string_view data) const noexcept {
    std::uint64_t v0 = 0x736f6d6570736575ULL ^ k0_;
    std::uint64_t v1 = 0x646f72616e646f6dULL ^ k1_;
    std::uint64_t v2 = 0x6c7967656e657261ULL ^ k0_;
    std::uint64_t v3 = 0x7465646279746573ULL ^ k1_;
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    const std::size_t n = data.size();
    const std::size_t end = n - (n % 8);
    for (std::size_t i = 0; i < end; i += 8) {
      std::uint64_t m;
      std::memcpy(&m, p + i, 8);  // little-endian hosts; a big-endian one only hashes differently
      v3 ^= m;
      round(v0, v1, v2, v3);
      v0 ^= m;
    }
    std::uint64_t b = static_cast<std::uint64_t>(n) << 56;
    for (std::size_t i = 0; i < n % 8; ++i) b |= static_cast<std::uint64_t>(p[end + i]) << (8 * i);
    v3 ^= b;
    round(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    round(v0, v1, v2, v3);
    round(v0, v1, v2, v3);
    round(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int b) noexcept { return (x << b) | (x >> (64 - b)); }
  static void round(std::uint64_t& v0, std::uint64_t& v1, std::uint64_t& v2, std::uint64_t& v3) noexcept {
    v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);
    v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;
    v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;
    v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);
  }
  std::uint64_t k0_ = 0;
  std::uint64_t k1_ = 0;
};

}  // namespace apikeys::detail
