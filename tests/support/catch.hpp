// One include for Catch2 v2 (Debian) and v3 (vcpkg). Tests use only TEST_CASE,
// SECTION, REQUIRE/CHECK and the THROWS macros, which both versions share.
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_test_macros.hpp>
#else
#include <catch2/catch.hpp>
#endif
