// Prints, as one JSON string, the introspection query graphql-js sends with every option on
// (tests/test_introspection.py posts it to the app). The optional argument is the typeDepth.
import { getIntrospectionQuery } from 'graphql';

const typeDepth = Number(process.argv[2] ?? 9);
const query = getIntrospectionQuery({
  descriptions: true,
  specifiedByUrl: true,
  directiveIsRepeatable: true,
  schemaDescription: true,
  inputValueDeprecation: true,
  oneOf: true,
  typeDepth,
});
console.log(JSON.stringify(query));
