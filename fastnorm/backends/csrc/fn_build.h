/* fn_build.h: what the build was made with (variant, flags, compiler, source digest), set by setup.py */
#ifndef FASTNORM_FN_BUILD_H
#define FASTNORM_FN_BUILD_H

#ifdef _OPENMP
#define FASTNORM_OPENMP 1
#else
#define FASTNORM_OPENMP 0
#endif
#ifndef FASTNORM_VARIANT
#define FASTNORM_VARIANT "baseline"
#endif
#ifndef FASTNORM_CFLAGS
#define FASTNORM_CFLAGS ""
#endif
#ifndef FASTNORM_SOURCE_DIGEST
#define FASTNORM_SOURCE_DIGEST ""
#endif
#if defined(__clang__)
#define FASTNORM_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define FASTNORM_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define FASTNORM_COMPILER "msvc"
#else
#define FASTNORM_COMPILER "unknown"
#endif

#endif  /* FASTNORM_FN_BUILD_H */
