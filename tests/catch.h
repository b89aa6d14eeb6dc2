// One include for Catch2 2.x (Debian 12) and 3.x (Ubuntu 24.04).
#pragma once
#if MOE_CATCH2_V3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
