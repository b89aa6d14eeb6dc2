# Runs a command and passes if it exits with EXPECT_EXIT ("nonzero": any
# failure) within WITHIN_SECONDS: a job with a failing rank must stop, not hang.
# With EXPECT_MESSAGE, its output must also hold that text exactly once (one
# message for the job, not one per rank); with EXPECT_REGEX, match that regex.
#   cmake -DEXPECT_EXIT=<code|nonzero> -DWITHIN_SECONDS=<s> [-DEXPECT_MESSAGE=<text>]
#         [-DEXPECT_REGEX=<regex>] -P expect_exit.cmake -- <command> [args...]
# The command is everything after "--" (before it, cmake would take options
# such as --help as its own).
math(EXPR last "${CMAKE_ARGC} - 1")
set(first 0)
foreach(i RANGE 1 ${last})
  if(first EQUAL 0 AND CMAKE_ARGV${i} STREQUAL "--")
    math(EXPR first "${i} + 1")
  endif()
endforeach()
set(command)
foreach(i RANGE ${first} ${last})
  list(APPEND command "${CMAKE_ARGV${i}}")
endforeach()

string(TIMESTAMP start "%s")
execute_process(COMMAND ${command} RESULT_VARIABLE code TIMEOUT ${WITHIN_SECONDS}
                OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("${out}")
string(TIMESTAMP end "%s")
math(EXPR seconds "${end} - ${start}")
message(STATUS "exit '${code}' after about ${seconds} s: ${command}")

if(code MATCHES "timeout")
  message(FATAL_ERROR "still running after ${WITHIN_SECONDS} s: the job hung")
endif()
if(EXPECT_EXIT STREQUAL "nonzero")
  if(code STREQUAL "0")
    message(FATAL_ERROR "the job exited 0; a failing rank must make it fail")
  endif()
elseif(NOT code STREQUAL EXPECT_EXIT)
  message(FATAL_ERROR "the job ended with '${code}', expected exit ${EXPECT_EXIT}")
endif()
if(DEFINED EXPECT_MESSAGE)
  string(FIND "${out}" "${EXPECT_MESSAGE}" first)
  if(first EQUAL -1)
    message(FATAL_ERROR "the output lacks '${EXPECT_MESSAGE}'")
  endif()
  string(LENGTH "${EXPECT_MESSAGE}" length)
  math(EXPR after "${first} + ${length}")
  string(SUBSTRING "${out}" ${after} -1 rest)
  string(FIND "${rest}" "${EXPECT_MESSAGE}" second)
  if(NOT second EQUAL -1)
    message(FATAL_ERROR "'${EXPECT_MESSAGE}' appears more than once: one message per job, not per rank")
  endif()
endif()
if(DEFINED EXPECT_REGEX AND NOT out MATCHES "${EXPECT_REGEX}")
  message(FATAL_ERROR "the output does not match '${EXPECT_REGEX}'")
endif()
