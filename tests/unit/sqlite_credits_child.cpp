// Child process of the cross-process credit tests (sqlite_credits_process_test.cpp):
// opens a SqliteStore on the parent's file and validates one token ATTEMPTS times
// through its own KeyManager, whose MemoryLimiter takes credits with lease_size LEASE.
// Usage: apikeys_sqlite_credits_child DB TOKEN LEASE ATTEMPTS [hold]
// Writes one byte per answer to stdout as it comes (unbuffered, so a parent that kills
// it still reads every answer given): 'a' admitted (valid), 'u' usage_exceeded, 'e'
// anything else. Exits 0 after the last attempt, once the KeyManager (and the leases
// its limiter holds) is destroyed; 1 with a message on error. With `hold`, it waits for
// the end of its stdin after the last attempt, its leases still held: a parent that
// means to kill it mid-run then always does, however fast the attempts went.
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"
#include "test_support.hpp"

int main(int argc, char** argv) {
  const bool hold = argc == 6 && std::string(argv[5]) == "hold";
  if (argc != 5 && !hold) {
    std::fprintf(stderr, "usage: apikeys_sqlite_credits_child DB TOKEN LEASE ATTEMPTS [hold]\n");
    return 2;
  }
  try {
    apikeys::SqliteStoreOptions store_options;
    store_options.durable = false;  // the exactness is the same; the test is faster
    auto store = std::make_shared<apikeys::SqliteStore>(argv[1], store_options);
    apikeys::MemoryLimiterOptions limiter_options;
    limiter_options.lease_size = std::stoull(argv[3]);
    apikeys::KeyManagerOptions options;
    options.validation.record_last_use = false;
    options.validation.limiter = std::make_shared<apikeys::MemoryLimiter>(store, limiter_options);
    auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
    {
      apikeys::KeyManager manager(store, hasher, options);
      const std::string token = argv[2];
      const unsigned long attempts = std::stoul(argv[4]);
      for (unsigned long i = 0; i < attempts; ++i) {
        const apikeys::ValidationCode code = manager.validate(token).code;
        const char c = code == apikeys::ValidationCode::valid            ? 'a'
                       : code == apikeys::ValidationCode::usage_exceeded ? 'u'
                                                                         : 'e';
        if (write(1, &c, 1) != 1) return 1;
      }
      char byte = 0;
      while (hold && read(0, &byte, 1) > 0) {
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "apikeys_sqlite_credits_child: %s\n", e.what());
    return 1;
  }
}
