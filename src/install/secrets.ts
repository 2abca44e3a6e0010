/** Sealed names of the compose stack's own credentials (besides each cluster's superuser and provisioner). */
export const AUTH_DB_SUPERUSER_SECRET = 'postgres/auth-db/superuser';
export const AUTH_DB_PASSWORD_SECRET = 'auth/db-password';
