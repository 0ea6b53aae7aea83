// The metadata check (src/metadata.cpp): size and depth at their limits, UTF-8, strict
// JSON with an object on top, duplicate member names per object, and that no error
// message repeats the text it refuses.
#include <string>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "metadata.hpp"

using apikeys::Error;
using apikeys::ErrorCode;
using apikeys::KeyPolicyLimits;
using apikeys::detail::check_metadata;
using apikeys::detail::metadata_error;

namespace {

// A marker that no rule's message contains: every refused text below carries it (in a
// member name or a string) where it can, and the message must not.
constexpr const char* kMarker = "Zq7Marker";

// The rule `text` breaks; checks the message quotes neither the marker nor the text.
std::string refusal(const std::string& text) {
  const char* rule = metadata_error(text);
  REQUIRE(rule != nullptr);
  const std::string message(rule);
  CHECK(message.rfind("metadata must ", 0) == 0);
  CHECK(message.find(kMarker) == std::string::npos);
  if (text.size() >= 8) CHECK(message.find(text) == std::string::npos);
  try {
    check_metadata(text);
    FAIL("check_metadata accepted what metadata_error refused");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK(std::string(e.what()).find(kMarker) == std::string::npos);
  }
  return message;
}

void accepted(const std::string& text) {
  INFO(text);
  CHECK(metadata_error(text) == nullptr);
  CHECK_NOTHROW(check_metadata(text));
}

// `levels` objects nested through member "a": {"a":{"a":{}}} is 3.
std::string nested_objects(int levels) {
  std::string s;
  for (int i = 1; i < levels; ++i) s += "{\"a\":";
  s += "{}";
  s.append(static_cast<std::size_t>(levels - 1), '}');
  return s;
}

// An object holding arrays nested `arrays` deep: {"a":[[1]]} is 3.
std::string nested_arrays(int arrays) {
  std::string s = "{\"a\":";
  s.append(static_cast<std::size_t>(arrays), '[');
  s += "1";
  s.append(static_cast<std::size_t>(arrays), ']');
  return s + "}";
}

}  // namespace

TEST_CASE("metadata: empty is none, and a plain object is fine", "[metadata]") {
  accepted("");
  accepted("{}");
  accepted(" \t\r\n{ } \n");
  accepted(R"({"team":"payments","tier":3,"flags":[true,false,null],"ratio":-1.5e3})");
  accepted(R"({"":"empty name","nested":{"list":[{},[]]}})");
  accepted("{\"name\":\"caf\xc3\xa9 \xf0\x9f\x94\x91\"}");  // é and an emoji, raw
  accepted(R"({"escaped":"\u00e9\ud83d\udd11\n\"\\\/"})");
}

TEST_CASE("metadata: at most 4096 bytes as given", "[metadata]") {
  static_assert(KeyPolicyLimits::kMaxMetadataBytes == 4096, "the test assumes 4096");
  const std::string head = "{\"k\":\"";
  const std::string tail = "\"}";
  const std::string exact = head + std::string(4096 - head.size() - tail.size(), 'x') + tail;
  REQUIRE(exact.size() == 4096);
  accepted(exact);
  const std::string over = head + std::string(4097 - head.size() - tail.size(), 'x') + tail;
  REQUIRE(over.size() == 4097);
  CHECK(refusal(over).find("4096") != std::string::npos);
  // White space counts: the limit is on the text as given.
  CHECK(refusal(exact + " ").find("4096") != std::string::npos);
  // A multi-byte character counts its bytes, not one.
  std::string wide = head;
  while (wide.size() + 2 + tail.size() <= 4096) wide += "\xc3\xa9";
  accepted(wide + tail);
  CHECK(refusal(wide + "\xc3\xa9" + tail).find("4096") != std::string::npos);
}

TEST_CASE("metadata: nesting at most 8 deep, the top object being 1", "[metadata]") {
  static_assert(KeyPolicyLimits::kMaxMetadataDepth == 8, "the test assumes 8");
  accepted(nested_objects(1));
  accepted(nested_objects(8));
  CHECK(refusal(nested_objects(9)).find("8") != std::string::npos);
  accepted(nested_arrays(7));  // 1 object + 7 arrays
  refusal(nested_arrays(8));
  // Mixed, and a deep branch beside a shallow one.
  accepted(R"({"a":[{"b":[{"c":[{"d":1}]}]}]})");    // 7
  accepted(R"({"a":[{"b":[{"c":[{"d":[]}]}]}]})");   // 8
  refusal(R"({"a":[{"b":[{"c":[{"d":[[]]}]}]}]})");  // 9
  accepted("{\"x\":1,\"deep\":" + nested_objects(7) + ",\"y\":2}");
  refusal("{\"x\":1,\"deep\":" + nested_objects(8) + ",\"y\":2}");
  // Depth returns as levels close: many siblings at depth 8 are fine.
  accepted("{\"a\":" + nested_objects(7) + ",\"b\":" + nested_objects(7) + "}");
  // Far deeper than allowed, within the size limit: refused, not a stack overflow.
  refusal(nested_arrays(2000));
}

TEST_CASE("metadata: valid UTF-8 inside strings and out", "[metadata]") {
  const std::string m = kMarker;
  for (const std::string& bad : std::vector<std::string>{
           "{\"" + m + "\":\"\xff\"}",              // a byte that is never UTF-8
           "{\"" + m + "\":\"\xc3\"}",              // a truncated sequence
           "{\"" + m + "\":\"\xc0\xaf\"}",          // an overlong '/'
           "{\"" + m + "\":\"\xed\xa0\x80\"}",      // an encoded surrogate
           "{\"" + m + "\":\"\xf4\x90\x80\x80\"}",  // above U+10FFFF
           "{\"\xfe" + m + "\":1}",                 // in a member name
           "\xef\xbb\xbf{\"" + m + "\":1}",         // U+FEFF before the object (a BOM)
           "{\"" + m + "\":1}\xff",                 // after the object
           "{\"" + m + "\":1\x80}",                 // between tokens
       }) {
    INFO(bad);
    const std::string rule = refusal(bad);
    if (bad.rfind("\xef\xbb\xbf", 0) != 0) CHECK(rule.find("UTF-8") != std::string::npos);
  }
  // An escaped lone surrogate is not a character either.
  refusal("{\"" + m + "\":\"\\ud800\"}");
  refusal("{\"" + m + "\":\"\\udc00x\"}");
}

TEST_CASE("metadata: a JSON object on top, strictly", "[metadata]") {
  const std::string m = kMarker;
  for (const std::string& top :
       std::vector<std::string>{"[]", "[{\"" + m + "\":1}]", "\"" + m + "\"", "42", "-1.5", "true",
                                "false", "null", " [1]", "\n\"x\""}) {
    INFO(top);
    CHECK(refusal(top) == "metadata must be a JSON object");
  }
  for (const std::string& broken : std::vector<std::string>{
           " ",                          // white space only
           "\t\r\n",                     //
           "{",                          // unterminated
           "{\"" + m + "\":1",           //
           "{\"" + m + "\":1}x",         // trailing garbage
           "{\"" + m + "\":1}{}",        // two objects
           "{\"" + m + "\":1} 1",        //
           "{\"" + m + "\":1,}",         // trailing comma
           "{\"" + m + "\":[1,]}",       //
           "{/* " + m + " */}",          // comments
           "{\"" + m + "\":1} // c",     //
           "{\"" + m + "\":1 # c\n}",    //
           "{'" + m + "':1}",            // single quotes
           "{" + m + ":1}",              // bare name
           "{\"" + m + "\":01}",         // leading zero
           "{\"" + m + "\":NaN}",        //
           "{\"" + m + "\":Infinity}",   //
           "{\"" + m + "\":+1}",         //
           "{\"" + m + "\":.5}",         //
           "{\"" + m + "\":0x10}",       //
           "{\"" + m + "\":\"a\tb\"}",   // raw control character in a string
           "{\"" + m + "\":\"\\x41\"}",  // unknown escape
           "{\"" + m + "\" 1}",          // missing colon
           "{\"" + m + "\":1 \"b\":2}",  // missing comma
           "{\"" + m + "\":True}",       //
       }) {
    INFO(broken);
    refusal(broken);
  }
  // A NUL after the object, with or without more after it (the parser alone would take
  // the NUL for the end of the text and accept the rest unread).
  refusal(std::string("{\"") + m + "\":1}" + std::string(1, '\0'));
  refusal(std::string("{\"") + m + "\":1}" + std::string(1, '\0') + ",\"admin\":true}");
  refusal(std::string("{\"") + m + "\":1} \n" + std::string(1, '\0') + "garbage");
  refusal(std::string("{\"") + m + "\":\"" + std::string(1, '\0') + "\"}");
}

TEST_CASE("metadata: no member name twice in one object", "[metadata]") {
  const std::string m = kMarker;
  const std::string dup_rule = "metadata must not repeat a member name within one object";
  CHECK(refusal("{\"" + m + "\":1,\"" + m + "\":2}") == dup_rule);
  CHECK(refusal("{\"" + m + "\":1,\"b\":2,\"" + m + "\":1}") == dup_rule);
  // In a nested object, and in an object inside an array.
  CHECK(refusal("{\"a\":{\"" + m + "\":1,\"" + m + "\":2}}") == dup_rule);
  CHECK(refusal("{\"a\":[{\"x\":1},{\"" + m + "\":1,\"" + m + "\":2}]}") == dup_rule);
  // After a nested object with the same name closed.
  CHECK(refusal("{\"" + m + "\":{\"" + m + "\":1},\"" + m + "\":2}") == dup_rule);
  // The same name spelled with an escape is the same name.
  CHECK(refusal("{\"ab" + m + "\":1,\"\\u0061b" + m + "\":2}") == dup_rule);
  CHECK(refusal(R"({"":1,"":2})") == dup_rule);
  // The same name in sibling objects, in parent and child, in array elements: fine.
  accepted(R"({"a":{"x":1},"b":{"x":2}})");
  accepted(R"({"x":{"x":{"x":1}}})");
  accepted(R"({"l":[{"x":1},{"x":2}],"x":3})");
  accepted(R"({"a":1,"A":2,"a ":3})");
}
