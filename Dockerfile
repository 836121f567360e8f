# lattice-gateway: multi-stage build on node:24-slim (the current LTS).
# Stage 1 compiles TypeScript with the dev dependencies; stage 2 carries
# only production dependencies and the compiled output, runs as a non-root
# user, and is health-checked on the admin listener's /healthz.

FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` builds, and the sources are not copied yet.
RUN npm ci --ignore-scripts
# tsconfig.build.json compiles the product only (no test/ or bench/).
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY routes ./routes
COPY plugins ./plugins
RUN npm run build

FROM node:24-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/dist/routes ./dist/routes
COPY --from=build /app/dist/plugins ./dist/plugins
COPY ui ./ui
# The image's `node` user (uid 1000) owns nothing it could rewrite.
USER node
EXPOSE 8080 9901
# The admin listener binds 127.0.0.1 by default, so the check runs inside
# the container; node's fetch avoids needing curl in a slim image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.ADMIN_PORT || 9901) + '/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/main.js"]
CMD ["--config", "/etc/lattice-gateway/gateway.yaml"]
