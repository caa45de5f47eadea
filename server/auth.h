/* Bearer-token authentication. The token file holds one token per line as
 * `sha256:<hex of the token> <role> [name]`, so a leaked file does not leak the tokens.
 * Roles are ordered: read < submit < admin. */
#ifndef QD_SRV_AUTH_H
#define QD_SRV_AUTH_H

#include "base/err.h"

typedef enum srv_role { SRV_ROLE_NONE = 0, SRV_ROLE_READ, SRV_ROLE_SUBMIT, SRV_ROLE_ADMIN } srv_role;

typedef struct srv_auth srv_auth;

/* Loads a token file; NULL with err set when it is unreadable or malformed. */
srv_auth *srv_auth_load(const char *path, qd_err *err);
void srv_auth_free(srv_auth *a);

/* The role of a presented token (the text after "Bearer "), SRV_ROLE_NONE when unknown. */
srv_role srv_auth_check(const srv_auth *a, const char *token);

/* Role name ("read", "submit", "admin"). */
const char *srv_role_name(srv_role r);

#endif
