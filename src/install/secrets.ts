/** Sealed names of the stack's auth-db credentials, for compose and Kubernetes alike (each cluster's own are in control/plane.ts). */
export const AUTH_DB_SUPERUSER_SECRET = 'postgres/auth-db/superuser';
export const AUTH_DB_PASSWORD_SECRET = 'auth/db-password';
