// The public helpers that build a secret key (append_random_base62, append_key_checksum)
// never free a buffer that still holds it when the string grows: checked through the
// program's operator delete (alloc_probe.cpp), so it lives in the limiter's test program.
#include "catch.hpp"

#include <string>

#include "alloc_probe.hpp"
#include "apikeys/key_generator.hpp"

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
