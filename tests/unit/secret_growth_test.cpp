// The public helpers that build a secret key (append_random_base62, append_key_checksum)
// never free a buffer that still holds it when the string grows, and the library's own
// copies of peppers and secrets are wiped before they are freed: checked through the
// program's operator delete (alloc_probe.cpp), so it lives in the limiter's test program.
#define OPENSSL_SUPPRESS_DEPRECATED 1  // SHA256_Init, to compute the hasher's midstates

#include "catch.hpp"

#include <openssl/opensslconf.h>
#include <openssl/sha.h>

#include <cstring>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "alloc_probe.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/types.hpp"

TEST_CASE("Building a secret with the public helpers frees no unwiped copy of it",
          "[key_generator][secrets]") {
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("freed blocks are not watched under AddressSanitizer");
    return;
  }
  for (const bool checksum_too : {false, true}) {
    CAPTURE(checksum_too);
    // A KeyGenerator of the user's own, as the header suggests: the prefix, the random
    // part (reserved exactly), then the checksum, or a second random part.
    std::string secret = "acme_sk_";
    apikeys::append_random_base62(secret, 32);
    REQUIRE(secret.size() == 40);
    const std::string marker = secret.substr(8, 32);
    {
      const apikeys_test::alloc_probe::WatchFrees watch(marker);
      if (checksum_too) {
        apikeys::append_key_checksum(secret);
      } else {
        apikeys::append_random_base62(secret, 200);
      }
    }
    CHECK(apikeys_test::alloc_probe::unwiped_frees() == 0);
    CHECK(secret.compare(8, 32, marker) == 0);  // the bytes moved, unchanged
  }
}

TEST_CASE("CsprngKeyGenerator frees no unwiped secret when an allocation fails",
          "[key_generator][secrets]") {
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("freed blocks are not watched under AddressSanitizer");
    return;
  }
  // Each allocation of generate() in turn fails, the one that copies the finished
  // secret into its SecretString included: whatever block is freed then holds no
  // secret. The secret prefix is the marker (short enough to live inside the format).
  apikeys::KeyFormat format;
  format.public_prefix = "wipetest_pk_";
  format.secret_prefix = "wipetest_sk_";
  apikeys::CsprngKeyGenerator generator;
  bool generated = false;
  for (std::size_t n = 1; n <= 32 && !generated; ++n) {
    CAPTURE(n);
    {
      const apikeys_test::alloc_probe::WatchFrees watch("wipetest_sk_");
      const apikeys_test::alloc_probe::FailNthAllocationHere fail(n);
      try {
        const apikeys::KeyPair pair = generator.generate(format);  // wiped as it dies
        generated = true;
      } catch (const std::bad_alloc&) {
      }
    }
    CHECK(apikeys_test::alloc_probe::unwiped_frees() == 0);
  }
  CHECK(generated);
}

TEST_CASE("Peppers and secrets are wiped before their blocks are freed", "[hasher][secrets]") {
  // SECURITY.md: secrets and peppers are wiped with OPENSSL_cleanse when their buffers
  // die. Our own copies are checked here (OpenSSL's are its own, freed by its free).
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("freed blocks are not watched under AddressSanitizer");
    return;
  }
  using apikeys_test::alloc_probe::unwiped_frees;
  using apikeys_test::alloc_probe::WatchFrees;
  const std::string current = "9f8e7d6c5b4a39281706f5e4d3c2b1a0-pepper-under-test-0123";
  const std::string retired = "0a1b2c3d4e5f60718293a4b5c6d7e8f9-retired-pepper-4567";
  const std::string legacy = "the Python service's API_KEY_SECRET, raw";
  std::vector<std::string> markers{current, retired, legacy};
#if !defined(OPENSSL_NO_DEPRECATED_3_0)
  // What HmacSha256Hasher keeps: the SHA-256 states after the key's inner and outer
  // pad blocks (RFC 2104), here their chaining values.
  for (const std::string* key : {&current, &retired, &legacy}) {
    for (const unsigned char xor_pad : {0x36, 0x5c}) {
      unsigned char pad[64] = {};
      std::memcpy(pad, key->data(), key->size());
      for (unsigned char& b : pad) b = static_cast<unsigned char>(b ^ xor_pad);
      SHA256_CTX state;
      REQUIRE(SHA256_Init(&state) == 1);
      REQUIRE(SHA256_Update(&state, pad, sizeof pad) == 1);
      markers.emplace_back(reinterpret_cast<const char*>(state.h), sizeof state.h);
    }
  }
#endif
  for (const std::string& marker_text : markers) {
    const std::string* marker = &marker_text;
    {
      const WatchFrees watch(*marker);
      {
        apikeys::HmacSha256Hasher hasher(
            std::vector<apikeys::Pepper>{apikeys::Pepper{1, current}, apikeys::Pepper{2, retired}},
            1, legacy);
        (void)hasher.hash("sk_0123456789abcdefghijklmnopqrstuv");
        (void)hasher.hash_with("sk_0123456789abcdefghijklmnopqrstuv", apikeys::kLegacyPepperId);
      }
    }
    CHECK(unwiped_frees() == 0);
  }
  // A secret held, moved and dropped.
  const std::string secret = "sk_Zq8mW3nR5tY7uI9oP1aS2dF4gH6jK8lL";
  const std::string text = secret + std::string(100, 'x');  // past any small buffer
  const std::string other(200, 'y');
  {
    const WatchFrees watch(secret);
    {
      apikeys::SecretString held(text);
      apikeys::SecretString moved = std::move(held);
      apikeys::SecretString assigned(other);
      assigned = std::move(moved);
      apikeys::SecretString copied(assigned.reveal());
    }
  }
  CHECK(unwiped_frees() == 0);
}
