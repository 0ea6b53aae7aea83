// SipHash against the reference implementation's published outputs.
#include <cstdint>
#include <string>

#include "../../src/memory_cache_probe.hpp"
#include "../../src/siphash.hpp"
#include "catch.hpp"

namespace {

// The key 00 01 .. 0f, as two little-endian words.
constexpr std::uint64_t kK0 = 0x0706050403020100ULL;
constexpr std::uint64_t kK1 = 0x0f0e0d0c0b0a0908ULL;

// The message of length n: 00 01 02 .. n-1.
std::string counting(std::size_t n) {
  std::string m(n, '\0');
  for (std::size_t i = 0; i < n; ++i) m[i] = static_cast<char>(i);
  return m;
}

// SipHash-2-4 under key 00..0f of the messages of length 0 to 63 (vectors.h of the
// reference implementation, as 64-bit words).
constexpr std::uint64_t kSip24[64] = {
    0x726fdb47dd0e0e31ULL, 0x74f839c593dc67fdULL, 0x0d6c8009d9a94f5aULL, 0x85676696d7fb7e2dULL,
    0xcf2794e0277187b7ULL, 0x18765564cd99a68dULL, 0xcbc9466e58fee3ceULL, 0xab0200f58b01d137ULL,
    0x93f5f5799a932462ULL, 0x9e0082df0ba9e4b0ULL, 0x7a5dbbc594ddb9f3ULL, 0xf4b32f46226bada7ULL,
    0x751e8fbc860ee5fbULL, 0x14ea5627c0843d90ULL, 0xf723ca908e7af2eeULL, 0xa129ca6149be45e5ULL,
    0x3f2acc7f57c29bdbULL, 0x699ae9f52cbe4794ULL, 0x4bc1b3f0968dd39cULL, 0xbb6dc91da77961bdULL,
    0xbed65cf21aa2ee98ULL, 0xd0f2cbb02e3b67c7ULL, 0x93536795e3a33e88ULL, 0xa80c038ccd5ccec8ULL,
    0xb8ad50c6f649af94ULL, 0xbce192de8a85b8eaULL, 0x17d835b85bbb15f3ULL, 0x2f2e6163076bcfadULL,
    0xde4daaaca71dc9a5ULL, 0xa6a2506687956571ULL, 0xad87a3535c49ef28ULL, 0x32d892fad841c342ULL,
    0x7127512f72f27cceULL, 0xa7f32346f95978e3ULL, 0x12e0b01abb051238ULL, 0x15e034d40fa197aeULL,
    0x314dffbe0815a3b4ULL, 0x027990f029623981ULL, 0xcadcd4e59ef40c4dULL, 0x9abfd8766a33735cULL,
    0x0e3ea96b5304a7d0ULL, 0xad0c42d6fc585992ULL, 0x187306c89bc215a9ULL, 0xd4a60abcf3792b95ULL,
    0xf935451de4f21df2ULL, 0xa9538f0419755787ULL, 0xdb9acddff56ca510ULL, 0xd06c98cd5c0975ebULL,
    0xe612a3cb9ecba951ULL, 0xc766e62cfcadaf96ULL, 0xee64435a9752fe72ULL, 0xa192d576b245165aULL,
    0x0a8787bf8ecb74b2ULL, 0x81b3e73d20b49b6fULL, 0x7fa8220ba3b2eceaULL, 0x245731c13ca42499ULL,
    0xb78dbfaf3a8d83bdULL, 0xea1ad565322a1a0bULL, 0x60e61c23a3795013ULL, 0x6606d7e446282b93ULL,
    0x6ca4ecb15c5f91e1ULL, 0x9f626da15c9625f3ULL, 0xe51b38608ef25f57ULL, 0x958a324ceb064572ULL,
};

// SipHash-2-4 with its 128-bit tag, under key 00..0f, of the messages of these lengths
// (vectors.h of the reference implementation, the tag's 16 bytes).
struct Vector128 {
  std::size_t length;
  std::uint8_t tag[16];
};
constexpr Vector128 kSip24x128[] = {
    {0,
     {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55, 0x02,
      0x93}},
    {1,
     {0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b, 0x22, 0xfc,
      0x45}},
    {2,
     {0x81, 0x77, 0x22, 0x8d, 0xa4, 0xa4, 0x5d, 0xc7, 0xfc, 0xa3, 0x8b, 0xde, 0xf6, 0x0a, 0xff,
      0xe4}},
    {3,
     {0x9c, 0x70, 0xb6, 0x0c, 0x52, 0x67, 0xa9, 0x4e, 0x5f, 0x33, 0xb6, 0xb0, 0x29, 0x85, 0xed,
      0x51}},
    {7,
     {0xa1, 0xf1, 0xeb, 0xbe, 0xd8, 0xdb, 0xc1, 0x53, 0xc0, 0xb8, 0x4a, 0xa6, 0x1f, 0xf0, 0x82,
      0x39}},
    {8,
     {0x3b, 0x62, 0xa9, 0xba, 0x62, 0x58, 0xf5, 0x61, 0x0f, 0x83, 0xe2, 0x64, 0xf3, 0x14, 0x97,
      0xb4}},
    {9,
     {0x26, 0x44, 0x99, 0x06, 0x0a, 0xd9, 0xba, 0xab, 0xc4, 0x7f, 0x8b, 0x02, 0xbb, 0x6d, 0x71,
      0xed}},
    {15,
     {0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11, 0x7e, 0x08, 0xec, 0x0f, 0x97, 0xcf, 0xc3,
      0xd9}},
    {16,
     {0x6e, 0xe2, 0xa4, 0xca, 0x67, 0xb0, 0x54, 0xbb, 0xfd, 0x33, 0x15, 0xbf, 0x85, 0x23, 0x05,
      0x77}},
    {63,
     {0x51, 0x50, 0xd1, 0x77, 0x2f, 0x50, 0x83, 0x4a, 0x50, 0x3e, 0x06, 0x9a, 0x97, 0x3f, 0xbd,
      0x7c}},
};

// Eight bytes as a little-endian word.
std::uint64_t le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

TEST_CASE("SipHash-2-4 with a 128-bit tag matches the reference vectors", "[siphash]") {
  for (const Vector128& v : kSip24x128) {
    INFO("message length " << v.length);
    const apikeys::detail::Sip128 tag =
        apikeys::detail::siphash128<2, 4>(kK0, kK1, counting(v.length));
    CHECK(tag.lo == le64(v.tag));
    CHECK(tag.hi == le64(v.tag + 8));
  }
}

TEST_CASE("SipHash-2-4 matches the reference vectors", "[siphash]") {
  for (std::size_t n = 0; n < 64; ++n) {
    INFO("message length " << n);
    CHECK(apikeys::detail::siphash<2, 4>(kK0, kK1, counting(n)) == kSip24[n]);
  }
}

TEST_CASE("SipHash-1-3, the tables' variant, matches the reference implementation", "[siphash]") {
  // The reference code built with one compression and three finalization rounds,
  // under the all-zero key; lengths around the 8-byte block boundary.
  const apikeys::detail::SipHasher zero_key(0, 0);
  CHECK(zero_key(counting(0)) == 0xd1fba762150c532cULL);
  CHECK(zero_key(counting(1)) == 0x68a914128e01e473ULL);
  CHECK(zero_key(counting(7)) == 0x2f098ab0c751325aULL);
  CHECK(zero_key(counting(8)) == 0xead411e67ebe2eeaULL);
  CHECK(zero_key(counting(9)) == 0x75927f9d95124362ULL);
  CHECK(zero_key(counting(15)) == 0xf30eb725bb91c9eaULL);
  CHECK(zero_key(counting(16)) == 0x8972188433a5c5b7ULL);
}

TEST_CASE("SipHasher: another key, another hash", "[siphash]") {
  const apikeys::detail::SipHasher a(kK0, kK1);
  const apikeys::detail::SipHasher b(kK0, kK1 ^ 1);
  const std::string pk = "pk_" + std::string(32, 'a');
  CHECK(a(pk) == apikeys::detail::siphash<1, 3>(kK0, kK1, pk));
  CHECK(a(pk) != b(pk));
  CHECK(a.wide(pk) == apikeys::detail::siphash128<1, 3>(kK0, kK1, pk));
  CHECK(!(a.wide(pk) == b.wide(pk)));
  // The wide tag is not the narrow one with a second word added.
  CHECK(a.wide(pk).lo != a(pk));
}

TEST_CASE("SipHasher: a default-built hasher draws its own random key", "[siphash]") {
  // What keeps chosen public keys from colliding in MemoryCache, MemoryLimiter and the
  // last-use tables (SECURITY.md): every table's hasher is built this way.
  const apikeys::detail::SipHasher a;
  const apikeys::detail::SipHasher b;
  const std::string pk = "pk_" + std::string(32, 'a');
  CHECK(a(pk) != b(pk));
  CHECK(!(a.wide(pk) == b.wide(pk)));
  // Neither is the fixed all-zero key a default member initialiser would give.
  const apikeys::detail::SipHasher zero(0, 0);
  CHECK(a(pk) != zero(pk));
  CHECK(b(pk) != zero(pk));
}

TEST_CASE("same_proof is true only when both words of the proofs match", "[siphash]") {
  const apikeys::detail::CacheProof a{{0x0123456789abcdefULL, 0xfedcba9876543210ULL}};
  CHECK(apikeys::detail::same_proof(a, a));
  for (int bit = 0; bit < 64; ++bit) {
    INFO("bit " << bit);
    apikeys::detail::CacheProof lo = a;
    lo.mac.lo ^= std::uint64_t{1} << bit;
    apikeys::detail::CacheProof hi = a;
    hi.mac.hi ^= std::uint64_t{1} << bit;
    CHECK_FALSE(apikeys::detail::same_proof(a, lo));
    CHECK_FALSE(apikeys::detail::same_proof(a, hi));
  }
}
