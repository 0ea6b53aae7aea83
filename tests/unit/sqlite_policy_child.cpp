// Child process of the cross-process policy test (sqlite_policy_process_test.cpp): opens
// a SqliteStore on the parent's file and makes one change to one key through its own
// KeyManager, then exits. The parent, which cached the key's verdict, must see the change
// through its revision poll alone: nothing in its process is told.
// Usage: apikeys_sqlite_policy_child DB ACCOUNT KEY_ID OP
//   OP: scopes=a,b (replace the scope set), disable, or rotate (grace 0).
// Prints "done" and exits 0 once the change is committed; 1 with a message on error.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "test_support.hpp"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: apikeys_sqlite_policy_child DB ACCOUNT KEY_ID OP\n");
    return 2;
  }
  try {
    auto store = std::make_shared<apikeys::SqliteStore>(argv[1]);
    auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
    apikeys::KeyManager manager(store, hasher);
    const auto account = apikeys::Uuid::parse(argv[2]);
    const auto key = apikeys::Uuid::parse(argv[3]);
    if (!account || !key) throw std::runtime_error("bad UUID");
    const std::string op = argv[4];
    if (op.rfind("scopes=", 0) == 0) {
      std::vector<std::string> scopes;
      std::string rest = op.substr(7);
      for (std::size_t at = 0; at <= rest.size();) {
        const std::size_t comma = std::min(rest.find(',', at), rest.size());
        if (comma > at) scopes.push_back(rest.substr(at, comma - at));
        at = comma + 1;
      }
      apikeys::KeyUpdate update;
      update.scopes = scopes;
      (void)manager.update(*account, *key, update);
    } else if (op == "disable") {
      (void)manager.disable(*account, *key);
    } else if (op == "rotate") {
      apikeys::RotateRequest request;
      request.grace = std::chrono::seconds(0);
      (void)manager.rotate(*account, *key, request);
    } else {
      throw std::runtime_error("unknown operation");
    }
    std::puts("done");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "apikeys_sqlite_policy_child: %s\n", e.what());
    return 1;
  }
}
